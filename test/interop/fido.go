//go:build cgo && !nolibfido2

package interop

/*
#cgo pkg-config: libfido2
#include <stdlib.h>
#include <fido.h>
#include <fido/es256.h>
#include <fido/credman.h>
#include "sockio.h"
*/
import "C"

import (
	"errors"
	"fmt"
	"sync"
	"unsafe"
)

var initOnce sync.Once

// Err is a libfido2 return code (FIDO_ERR_*). For errors the device
// reported, it is the CTAP status byte.
type Err int

// libfido2 return codes the tests check.
const (
	ErrOK              Err = C.FIDO_OK
	ErrPINInvalid      Err = C.FIDO_ERR_PIN_INVALID
	ErrPINAuthBlocked  Err = C.FIDO_ERR_PIN_AUTH_BLOCKED
	ErrNoCredentials   Err = C.FIDO_ERR_NO_CREDENTIALS
	ErrNotAllowed      Err = C.FIDO_ERR_NOT_ALLOWED
	ErrInvalidSig      Err = C.FIDO_ERR_INVALID_SIG
	ErrPINRequired     Err = C.FIDO_ERR_PIN_REQUIRED
	ErrPINNotSet       Err = C.FIDO_ERR_PIN_NOT_SET
	ErrUnsupportedOpt  Err = C.FIDO_ERR_UNSUPPORTED_OPTION
	ErrCredentialExcl  Err = C.FIDO_ERR_CREDENTIAL_EXCLUDED
	ErrOperationDenied Err = C.FIDO_ERR_OPERATION_DENIED
)

func (e Err) Error() string {
	return fmt.Sprintf("libfido2: %s (%d)", C.GoString(C.fido_strerr(C.int(e))), int(e))
}

func check(r C.int) error {
	if r == C.FIDO_OK {
		return nil
	}
	return Err(r)
}

// Opt is a libfido2 tri-state option.
type Opt int

// Option values.
const (
	OptOmit  Opt = C.FIDO_OPT_OMIT
	OptFalse Opt = C.FIDO_OPT_FALSE
	OptTrue  Opt = C.FIDO_OPT_TRUE
)

// Extension bits (FIDO_EXT_*).
const (
	ExtHMACSecret  = C.FIDO_EXT_HMAC_SECRET
	ExtCredProtect = C.FIDO_EXT_CRED_PROTECT
)

// COSE ES256 and credProtect levels as libfido2 names them.
const (
	coseES256           = C.COSE_ES256
	CredProtUVOptional  = C.FIDO_CRED_PROT_UV_OPTIONAL
	CredProtUVOptWithID = C.FIDO_CRED_PROT_UV_OPTIONAL_WITH_ID
	CredProtUVRequired  = C.FIDO_CRED_PROT_UV_REQUIRED
)

// bytesPtr returns a pointer to b's first byte for a call that copies it.
func bytesPtr(b []byte) *C.uchar {
	if len(b) == 0 {
		return nil
	}
	return (*C.uchar)(unsafe.Pointer(&b[0]))
}

func goBytes(p *C.uchar, n C.size_t) []byte {
	if p == nil || n == 0 {
		return nil
	}
	return C.GoBytes(unsafe.Pointer(p), C.int(n))
}

func goString(p *C.char) string {
	if p == nil {
		return ""
	}
	return C.GoString(p)
}

// Device is a libfido2 device opened over the socket transport.
type Device struct{ d *C.fido_dev_t }

// Open connects libfido2 to the authenticator listening on the
// SOCK_SEQPACKET socket at path.
func Open(path string) (*Device, error) {
	initOnce.Do(func() { C.fido_init(0) })
	d := C.fido_dev_new()
	if d == nil {
		return nil, errors.New("fido_dev_new failed")
	}
	if err := check(C.sockio_attach(d)); err != nil {
		C.fido_dev_free(&d)
		return nil, fmt.Errorf("fido_dev_set_io_functions: %w", err)
	}
	cpath := C.CString(path)
	defer C.free(unsafe.Pointer(cpath))
	if err := check(C.fido_dev_open(d, cpath)); err != nil {
		C.fido_dev_free(&d)
		return nil, fmt.Errorf("fido_dev_open: %w", err)
	}
	return &Device{d: d}, nil
}

// Close closes and frees the device.
func (d *Device) Close() {
	C.fido_dev_close(d.d)
	C.fido_dev_free(&d.d)
}

// ForceU2F makes libfido2 speak CTAP1/U2F to the device.
func (d *Device) ForceU2F() { C.fido_dev_force_u2f(d.d) }

// IsFIDO2 reports whether libfido2 saw CTAP2 support.
func (d *Device) IsFIDO2() bool { return bool(C.fido_dev_is_fido2(d.d)) }

// Info is the part of authenticatorGetInfo the tests look at.
type Info struct {
	Versions   []string
	Extensions []string
	Options    map[string]bool
	Protocols  []uint8
}

// Info runs authenticatorGetInfo through libfido2.
func (d *Device) Info() (*Info, error) {
	ci := C.fido_cbor_info_new()
	defer C.fido_cbor_info_free(&ci)
	if err := check(C.fido_dev_get_cbor_info(d.d, ci)); err != nil {
		return nil, err
	}
	info := &Info{Options: map[string]bool{}}
	strs := func(p **C.char, n C.size_t) []string {
		var out []string
		for _, s := range unsafe.Slice(p, int(n)) {
			out = append(out, C.GoString(s))
		}
		return out
	}
	info.Versions = strs(C.fido_cbor_info_versions_ptr(ci), C.fido_cbor_info_versions_len(ci))
	info.Extensions = strs(C.fido_cbor_info_extensions_ptr(ci), C.fido_cbor_info_extensions_len(ci))
	names := strs(C.fido_cbor_info_options_name_ptr(ci), C.fido_cbor_info_options_len(ci))
	vals := unsafe.Slice(C.fido_cbor_info_options_value_ptr(ci), int(C.fido_cbor_info_options_len(ci)))
	for i, n := range names {
		info.Options[n] = bool(vals[i])
	}
	for _, p := range unsafe.Slice(C.fido_cbor_info_protocols_ptr(ci), int(C.fido_cbor_info_protocols_len(ci))) {
		info.Protocols = append(info.Protocols, uint8(p))
	}
	return info, nil
}

// CredRequest is a makeCredential request.
type CredRequest struct {
	RPID, RPName   string
	UserID         []byte
	UserName       string
	DisplayName    string
	ClientDataHash []byte
	RK             bool
	CredProtect    int // 0: not requested
	HMACSecret     bool
	PIN            string // non-empty: libfido2 gets a pinUvAuthToken
	ExcludeList    [][]byte
}

// Cred is what makeCredential returned, as libfido2 parsed it.
type Cred struct {
	Req         CredRequest
	Fmt         string
	ID          []byte
	PubKey      []byte // ES256: X ‖ Y
	AuthData    []byte // CBOR byte string wrapping the authenticator data
	AuthDataRaw []byte
	Sig         []byte
	X5C         []byte
	Flags       uint8
	SigCount    uint32
	Prot        int
}

func cstr(s string) (*C.char, func()) {
	if s == "" {
		return nil, func() {}
	}
	p := C.CString(s)
	return p, func() { C.free(unsafe.Pointer(p)) }
}

// setupCred fills a fido_cred_t with the request's parameters.
func setupCred(c *C.fido_cred_t, r CredRequest) error {
	rpid, f1 := cstr(r.RPID)
	defer f1()
	rpname, f2 := cstr(r.RPName)
	defer f2()
	if err := check(C.fido_cred_set_type(c, coseES256)); err != nil {
		return fmt.Errorf("set type: %w", err)
	}
	if err := check(C.fido_cred_set_clientdata_hash(c, bytesPtr(r.ClientDataHash), C.size_t(len(r.ClientDataHash)))); err != nil {
		return fmt.Errorf("set clientdata hash: %w", err)
	}
	if err := check(C.fido_cred_set_rp(c, rpid, rpname)); err != nil {
		return fmt.Errorf("set rp: %w", err)
	}
	var ext C.int
	if r.HMACSecret {
		ext |= C.FIDO_EXT_HMAC_SECRET
	}
	if err := check(C.fido_cred_set_extensions(c, ext)); err != nil {
		return fmt.Errorf("set extensions: %w", err)
	}
	if r.CredProtect != 0 {
		if err := check(C.fido_cred_set_prot(c, C.int(r.CredProtect))); err != nil {
			return fmt.Errorf("set prot: %w", err)
		}
	}
	if r.RK {
		if err := check(C.fido_cred_set_rk(c, C.FIDO_OPT_TRUE)); err != nil {
			return fmt.Errorf("set rk: %w", err)
		}
	}
	return nil
}

// MakeCred runs authenticatorMakeCredential (or U2F REGISTER after
// ForceU2F) through libfido2.
func (d *Device) MakeCred(r CredRequest) (*Cred, error) {
	c := C.fido_cred_new()
	defer C.fido_cred_free(&c)
	if err := setupCred(c, r); err != nil {
		return nil, err
	}
	name, f1 := cstr(r.UserName)
	defer f1()
	disp, f2 := cstr(r.DisplayName)
	defer f2()
	if err := check(C.fido_cred_set_user(c, bytesPtr(r.UserID), C.size_t(len(r.UserID)), name, disp, nil)); err != nil {
		return nil, fmt.Errorf("set user: %w", err)
	}
	for _, id := range r.ExcludeList {
		if err := check(C.fido_cred_exclude(c, bytesPtr(id), C.size_t(len(id)))); err != nil {
			return nil, fmt.Errorf("exclude: %w", err)
		}
	}
	pin, f3 := cstr(r.PIN)
	defer f3()
	if err := check(C.fido_dev_make_cred(d.d, c, pin)); err != nil {
		return nil, err
	}
	return &Cred{
		Req:         r,
		Fmt:         goString(C.fido_cred_fmt(c)),
		ID:          goBytes(C.fido_cred_id_ptr(c), C.fido_cred_id_len(c)),
		PubKey:      goBytes(C.fido_cred_pubkey_ptr(c), C.fido_cred_pubkey_len(c)),
		AuthData:    goBytes(C.fido_cred_authdata_ptr(c), C.fido_cred_authdata_len(c)),
		AuthDataRaw: goBytes(C.fido_cred_authdata_raw_ptr(c), C.fido_cred_authdata_raw_len(c)),
		Sig:         goBytes(C.fido_cred_sig_ptr(c), C.fido_cred_sig_len(c)),
		X5C:         goBytes(C.fido_cred_x5c_ptr(c), C.fido_cred_x5c_len(c)),
		Flags:       uint8(C.fido_cred_flags(c)),
		SigCount:    uint32(C.fido_cred_sigcount(c)),
		Prot:        int(C.fido_cred_prot(c)),
	}, nil
}

// Verify checks the attestation the way `fido2-cred -V` does, in a fresh
// fido_cred_t fed only with the request and the returned fields:
// fido_cred_verify_self for self attestation (no x5c), else
// fido_cred_verify against the certificate.
func (cr *Cred) Verify() error {
	c := C.fido_cred_new()
	defer C.fido_cred_free(&c)
	if err := setupCred(c, cr.Req); err != nil {
		return err
	}
	if err := check(C.fido_cred_set_authdata(c, bytesPtr(cr.AuthData), C.size_t(len(cr.AuthData)))); err != nil {
		return fmt.Errorf("set authdata: %w", err)
	}
	if len(cr.X5C) > 0 {
		if err := check(C.fido_cred_set_x509(c, bytesPtr(cr.X5C), C.size_t(len(cr.X5C)))); err != nil {
			return fmt.Errorf("set x509: %w", err)
		}
	}
	if err := check(C.fido_cred_set_sig(c, bytesPtr(cr.Sig), C.size_t(len(cr.Sig)))); err != nil {
		return fmt.Errorf("set sig: %w", err)
	}
	f, free := cstr(cr.Fmt)
	defer free()
	if err := check(C.fido_cred_set_fmt(c, f)); err != nil {
		return fmt.Errorf("set fmt: %w", err)
	}
	if len(cr.X5C) > 0 {
		return check(C.fido_cred_verify(c))
	}
	return check(C.fido_cred_verify_self(c))
}

// AssertRequest is a getAssertion request.
type AssertRequest struct {
	RPID           string
	ClientDataHash []byte
	AllowList      [][]byte
	UP, UV         Opt
	PIN            string
	HMACSalt       []byte // non-empty: ask hmac-secret
}

// Assertion is one assertion statement.
type Assertion struct {
	AuthData   []byte // CBOR byte string wrapping the authenticator data
	Sig        []byte
	ID         []byte
	UserID     []byte
	UserName   string
	Flags      uint8
	SigCount   uint32
	HMACSecret []byte
}

func setupAssert(a *C.fido_assert_t, r AssertRequest) error {
	rpid, f := cstr(r.RPID)
	defer f()
	if err := check(C.fido_assert_set_rp(a, rpid)); err != nil {
		return fmt.Errorf("set rp: %w", err)
	}
	if err := check(C.fido_assert_set_clientdata_hash(a, bytesPtr(r.ClientDataHash), C.size_t(len(r.ClientDataHash)))); err != nil {
		return fmt.Errorf("set clientdata hash: %w", err)
	}
	if err := check(C.fido_assert_set_up(a, C.fido_opt_t(r.UP))); err != nil {
		return fmt.Errorf("set up: %w", err)
	}
	if err := check(C.fido_assert_set_uv(a, C.fido_opt_t(r.UV))); err != nil {
		return fmt.Errorf("set uv: %w", err)
	}
	if len(r.HMACSalt) > 0 {
		if err := check(C.fido_assert_set_extensions(a, C.FIDO_EXT_HMAC_SECRET)); err != nil {
			return fmt.Errorf("set extensions: %w", err)
		}
	}
	return nil
}

// GetAssert runs getAssertion (and getNextAssertion for every further
// credential; or U2F AUTHENTICATE after ForceU2F) through libfido2.
func (d *Device) GetAssert(r AssertRequest) ([]Assertion, error) {
	a := C.fido_assert_new()
	defer C.fido_assert_free(&a)
	if err := setupAssert(a, r); err != nil {
		return nil, err
	}
	if len(r.HMACSalt) > 0 {
		if err := check(C.fido_assert_set_hmac_salt(a, bytesPtr(r.HMACSalt), C.size_t(len(r.HMACSalt)))); err != nil {
			return nil, fmt.Errorf("set hmac salt: %w", err)
		}
	}
	for _, id := range r.AllowList {
		if err := check(C.fido_assert_allow_cred(a, bytesPtr(id), C.size_t(len(id)))); err != nil {
			return nil, fmt.Errorf("allow cred: %w", err)
		}
	}
	pin, f := cstr(r.PIN)
	defer f()
	if err := check(C.fido_dev_get_assert(d.d, a, pin)); err != nil {
		return nil, err
	}
	n := int(C.fido_assert_count(a))
	out := make([]Assertion, n)
	for i := range out {
		idx := C.size_t(i)
		out[i] = Assertion{
			AuthData:   goBytes(C.fido_assert_authdata_ptr(a, idx), C.fido_assert_authdata_len(a, idx)),
			Sig:        goBytes(C.fido_assert_sig_ptr(a, idx), C.fido_assert_sig_len(a, idx)),
			ID:         goBytes(C.fido_assert_id_ptr(a, idx), C.fido_assert_id_len(a, idx)),
			UserID:     goBytes(C.fido_assert_user_id_ptr(a, idx), C.fido_assert_user_id_len(a, idx)),
			UserName:   goString(C.fido_assert_user_name(a, idx)),
			Flags:      uint8(C.fido_assert_flags(a, idx)),
			SigCount:   uint32(C.fido_assert_sigcount(a, idx)),
			HMACSecret: goBytes(C.fido_assert_hmac_secret_ptr(a, idx), C.fido_assert_hmac_secret_len(a, idx)),
		}
	}
	return out, nil
}

// VerifyAssertion checks one assertion with fido_assert_verify against
// an ES256 public key (X ‖ Y), in a fresh fido_assert_t fed with the
// request and the returned fields, as `fido2-assert -V` does.
func VerifyAssertion(r AssertRequest, as Assertion, pub []byte) error {
	a := C.fido_assert_new()
	defer C.fido_assert_free(&a)
	if err := setupAssert(a, r); err != nil {
		return err
	}
	if err := check(C.fido_assert_set_count(a, 1)); err != nil {
		return err
	}
	if err := check(C.fido_assert_set_authdata(a, 0, bytesPtr(as.AuthData), C.size_t(len(as.AuthData)))); err != nil {
		return fmt.Errorf("set authdata: %w", err)
	}
	if err := check(C.fido_assert_set_sig(a, 0, bytesPtr(as.Sig), C.size_t(len(as.Sig)))); err != nil {
		return fmt.Errorf("set sig: %w", err)
	}
	pk := C.es256_pk_new()
	defer C.es256_pk_free(&pk)
	if err := check(C.es256_pk_from_ptr(pk, unsafe.Pointer(bytesPtr(pub)), C.size_t(len(pub)))); err != nil {
		return fmt.Errorf("public key: %w", err)
	}
	return check(C.fido_assert_verify(a, 0, coseES256, unsafe.Pointer(pk)))
}

// SetPIN sets the first PIN.
func (d *Device) SetPIN(pin string) error {
	p, f := cstr(pin)
	defer f()
	return check(C.fido_dev_set_pin(d.d, p, nil))
}

// ChangePIN changes the PIN from old to pin.
func (d *Device) ChangePIN(pin, old string) error {
	p, f1 := cstr(pin)
	defer f1()
	o, f2 := cstr(old)
	defer f2()
	return check(C.fido_dev_set_pin(d.d, p, o))
}

// RetryCount returns the PIN retries left (getPINRetries).
func (d *Device) RetryCount() (int, error) {
	var n C.int
	if err := check(C.fido_dev_get_retry_count(d.d, &n)); err != nil {
		return 0, err
	}
	return int(n), nil
}

// Reset runs authenticatorReset.
func (d *Device) Reset() error { return check(C.fido_dev_reset(d.d)) }

// Metadata is getCredsMetadata.
type Metadata struct{ Existing, Remaining uint64 }

// CredsMetadata runs credentialManagement getCredsMetadata.
func (d *Device) CredsMetadata(pin string) (Metadata, error) {
	m := C.fido_credman_metadata_new()
	defer C.fido_credman_metadata_free(&m)
	p, f := cstr(pin)
	defer f()
	if err := check(C.fido_credman_get_dev_metadata(d.d, m, p)); err != nil {
		return Metadata{}, err
	}
	return Metadata{
		Existing:  uint64(C.fido_credman_rk_existing(m)),
		Remaining: uint64(C.fido_credman_rk_remaining(m)),
	}, nil
}

// RP is one enumerateRPs entry.
type RP struct {
	ID, Name string
	Hash     []byte
}

// RPs runs credentialManagement enumerateRPs.
func (d *Device) RPs(pin string) ([]RP, error) {
	rp := C.fido_credman_rp_new()
	defer C.fido_credman_rp_free(&rp)
	p, f := cstr(pin)
	defer f()
	if err := check(C.fido_credman_get_dev_rp(d.d, rp, p)); err != nil {
		return nil, err
	}
	out := make([]RP, int(C.fido_credman_rp_count(rp)))
	for i := range out {
		idx := C.size_t(i)
		out[i] = RP{
			ID:   goString(C.fido_credman_rp_id(rp, idx)),
			Name: goString(C.fido_credman_rp_name(rp, idx)),
			Hash: goBytes(C.fido_credman_rp_id_hash_ptr(rp, idx), C.fido_credman_rp_id_hash_len(rp, idx)),
		}
	}
	return out, nil
}

// RK is one enumerateCredentials entry.
type RK struct {
	ID          []byte
	UserID      []byte
	UserName    string
	DisplayName string
	PubKey      []byte
	Prot        int
}

// RKs runs credentialManagement enumerateCredentials for rpID.
func (d *Device) RKs(rpID, pin string) ([]RK, error) {
	rk := C.fido_credman_rk_new()
	defer C.fido_credman_rk_free(&rk)
	id, f1 := cstr(rpID)
	defer f1()
	p, f2 := cstr(pin)
	defer f2()
	if err := check(C.fido_credman_get_dev_rk(d.d, id, rk, p)); err != nil {
		return nil, err
	}
	out := make([]RK, int(C.fido_credman_rk_count(rk)))
	for i := range out {
		c := C.fido_credman_rk(rk, C.size_t(i))
		out[i] = RK{
			ID:          goBytes(C.fido_cred_id_ptr(c), C.fido_cred_id_len(c)),
			UserID:      goBytes(C.fido_cred_user_id_ptr(c), C.fido_cred_user_id_len(c)),
			UserName:    goString(C.fido_cred_user_name(c)),
			DisplayName: goString(C.fido_cred_display_name(c)),
			PubKey:      goBytes(C.fido_cred_pubkey_ptr(c), C.fido_cred_pubkey_len(c)),
			Prot:        int(C.fido_cred_prot(c)),
		}
	}
	return out, nil
}

// DeleteRK runs credentialManagement deleteCredential.
func (d *Device) DeleteRK(id []byte, pin string) error {
	p, f := cstr(pin)
	defer f()
	return check(C.fido_credman_del_dev_rk(d.d, bytesPtr(id), C.size_t(len(id)), p))
}

// UpdateRKUser runs credentialManagement updateUserInformation.
func (d *Device) UpdateRKUser(credID, userID []byte, name, display, pin string) error {
	c := C.fido_cred_new()
	defer C.fido_cred_free(&c)
	if err := check(C.fido_cred_set_id(c, bytesPtr(credID), C.size_t(len(credID)))); err != nil {
		return err
	}
	n, f1 := cstr(name)
	defer f1()
	dn, f2 := cstr(display)
	defer f2()
	if err := check(C.fido_cred_set_user(c, bytesPtr(userID), C.size_t(len(userID)), n, dn, nil)); err != nil {
		return err
	}
	p, f3 := cstr(pin)
	defer f3()
	return check(C.fido_credman_set_dev_rk(d.d, c, p))
}
