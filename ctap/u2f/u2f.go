// Package u2f implements the FIDO U2F (CTAP1) raw message protocol that
// arrives over CTAPHID_MSG: REGISTER, AUTHENTICATE (check-only, enforce
// and dont-enforce user presence) and VERSION, answered with ISO 7816
// status words. Keys come from the same store as CTAP2, so a key handle
// is a credential ID.
package u2f

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/presence"
	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// Store is the part of the key store U2F needs. ctap2.Store (and so
// *tpmstore.Store) satisfies it.
type Store interface {
	CreateCredential(rpIDHash [32]byte, opts tpmstore.CredentialOptions) (*tpmstore.Credential, error)
	// OpenCredential returns an error wrapping tpmstore.ErrCredentialInvalid
	// for a key handle that is not this store's for rpIDHash.
	OpenCredential(rpIDHash [32]byte, id []byte) (*tpmstore.Credential, error)
	// Sign returns an ASN.1 DER ECDSA signature over a SHA-256 digest.
	Sign(c *tpmstore.Credential, digest []byte) ([]byte, error)
	NextCounter() (uint32, error)
}

// Defaults for Config.
const (
	DefaultApprovalWindow = 5 * time.Second
	DefaultPromptTimeout  = 30 * time.Second
)

// Config configures a Handler.
type Config struct {
	Store    Store
	Presence presence.Prompter
	Logger   *slog.Logger     // discards when nil
	Rand     io.Reader        // crypto/rand.Reader when nil; used for certificate serials
	Now      func() time.Time // time.Now when nil
	// ApprovalWindow is how long an answer to a prompt stays valid for the
	// client's retry of exactly the same request (same operation, appId,
	// challenge and key handle). Default DefaultApprovalWindow.
	ApprovalWindow time.Duration
	// PromptTimeout bounds one prompt. Default DefaultPromptTimeout.
	PromptTimeout time.Duration
}

// Handler serves U2F APDUs. It implements ctap.Handler and is safe
// for concurrent use.
type Handler struct {
	cfg Config
	log *slog.Logger
	up  presenceGate
}

// New returns a Handler. Store and Presence are required.
func New(cfg Config) (*Handler, error) {
	if cfg.Store == nil || cfg.Presence == nil {
		return nil, errors.New("u2f: Config.Store and Config.Presence are required")
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.ApprovalWindow <= 0 {
		cfg.ApprovalWindow = DefaultApprovalWindow
	}
	if cfg.PromptTimeout <= 0 {
		cfg.PromptTimeout = DefaultPromptTimeout
	}
	h := &Handler{cfg: cfg, log: cfg.Logger}
	h.up = presenceGate{
		prompter: cfg.Presence,
		now:      cfg.Now,
		window:   cfg.ApprovalWindow,
		timeout:  cfg.PromptTimeout,
		log:      cfg.Logger,
	}
	return h, nil
}

// Handle implements ctap.Handler for CTAPHID_MSG: the payload is a
// command APDU. The response is always response data followed by a
// status word; the error is always nil.
func (h *Handler) Handle(ctx context.Context, req ctap.Request) ([]byte, error) {
	resp, err := h.handle(ctx, req.Payload)
	if err != nil {
		var sw swError
		if !errors.As(err, &sw) {
			h.log.Error("u2f request failed", "err", err)
			sw = swError(SWUnknown)
		}
		return withSW(nil, uint16(sw)), nil
	}
	return withSW(resp, SWNoError), nil
}

func (h *Handler) handle(ctx context.Context, req []byte) ([]byte, error) {
	a, err := parseAPDU(req) // judges CLA and INS first
	if err != nil {
		return nil, err
	}
	switch a.ins {
	case insRegister:
		return h.register(ctx, a)
	case insAuthenticate:
		return h.authenticate(ctx, a)
	case insVersion:
		if len(a.data) != 0 {
			return nil, swError(SWWrongLength)
		}
		return []byte("U2F_V2"), nil
	}
	return nil, swError(SWInsNotSupported)
}

// register: U2F Raw Message Formats §4. Request data: challenge(32) ‖
// application(32). P1 is not examined (clients send 0x00 or 0x03; user
// presence is always required to register).
func (h *Handler) register(ctx context.Context, a apdu) ([]byte, error) {
	if len(a.data) != registerDataLength {
		return nil, swError(SWWrongLength)
	}
	var challenge, app [32]byte
	copy(challenge[:], a.data[:32])
	copy(app[:], a.data[32:])

	if err := h.up.confirm(ctx, presence.OpRegister, app, gateKey(insRegister, app, challenge, nil)); err != nil {
		return nil, err
	}
	cred, err := h.cfg.Store.CreateCredential(app, tpmstore.CredentialOptions{CredProtect: tpmstore.CredProtectUVOptional})
	if err != nil {
		return nil, fmt.Errorf("create credential: %w", err)
	}
	if len(cred.ID) > 255 {
		return nil, fmt.Errorf("credential ID of %d bytes does not fit a U2F key handle", len(cred.ID))
	}
	pub, err := uncompressed(cred.PublicKey)
	if err != nil {
		return nil, err
	}
	cert, err := h.attestationCertificate(cred)
	if err != nil {
		return nil, err
	}
	// Signature over 0x00 ‖ application ‖ challenge ‖ key handle ‖ public key.
	d := sha256.New()
	d.Write([]byte{0x00})
	d.Write(app[:])
	d.Write(challenge[:])
	d.Write(cred.ID)
	d.Write(pub)
	sig, err := h.cfg.Store.Sign(cred, d.Sum(nil))
	if err != nil {
		return nil, fmt.Errorf("sign registration: %w", err)
	}
	resp := make([]byte, 0, 1+65+1+len(cred.ID)+len(cert)+len(sig))
	resp = append(resp, 0x05)
	resp = append(resp, pub...)
	resp = append(resp, byte(len(cred.ID)))
	resp = append(resp, cred.ID...)
	resp = append(resp, cert...)
	resp = append(resp, sig...)
	return resp, nil
}

// authenticate: U2F Raw Message Formats §5. Request data: challenge(32) ‖
// application(32) ‖ L(1) ‖ key handle(L).
func (h *Handler) authenticate(ctx context.Context, a apdu) ([]byte, error) {
	switch a.p1 {
	case p1CheckOnly, p1EnforceUP, p1DontEnforceUP:
	default:
		return nil, swError(SWWrongP1P2)
	}
	if len(a.data) < 65 || len(a.data) != 65+int(a.data[64]) {
		return nil, swError(SWWrongLength)
	}
	var challenge, app [32]byte
	copy(challenge[:], a.data[:32])
	copy(app[:], a.data[32:64])
	kh := a.data[65:]

	cred, err := h.cfg.Store.OpenCredential(app, kh)
	if errors.Is(err, tpmstore.ErrCredentialInvalid) {
		return nil, swError(SWWrongData)
	}
	if err != nil {
		return nil, fmt.Errorf("open key handle: %w", err)
	}
	// A credential that demands user verification (credProtect 3) cannot
	// be used over U2F, which has no UV (CTAP 2.1 §12.1).
	if cred.Options.CredProtect == tpmstore.CredProtectUVRequired {
		return nil, swError(SWWrongData)
	}
	var flags byte
	switch a.p1 {
	case p1CheckOnly:
		// The key handle is ours: say so the U2F way.
		return nil, swError(SWConditionsNotSatisfied)
	case p1EnforceUP:
		if err := h.up.confirm(ctx, presence.OpAuthenticate, app, gateKey(insAuthenticate, app, challenge, kh)); err != nil {
			return nil, err
		}
		flags = 0x01
	}
	counter, err := h.cfg.Store.NextCounter()
	if err != nil {
		return nil, fmt.Errorf("signature counter: %w", err)
	}
	var ctr [4]byte
	binary.BigEndian.PutUint32(ctr[:], counter)
	// Signature over application ‖ flags ‖ counter ‖ challenge.
	d := sha256.New()
	d.Write(app[:])
	d.Write([]byte{flags})
	d.Write(ctr[:])
	d.Write(challenge[:])
	sig, err := h.cfg.Store.Sign(cred, d.Sum(nil))
	if err != nil {
		return nil, fmt.Errorf("sign assertion: %w", err)
	}
	resp := make([]byte, 0, 5+len(sig))
	resp = append(resp, flags)
	resp = append(resp, ctr[:]...)
	resp = append(resp, sig...)
	return resp, nil
}

// uncompressed encodes a P-256 public key as 0x04 ‖ X ‖ Y.
func uncompressed(pub *ecdsa.PublicKey) ([]byte, error) {
	if pub == nil || pub.Curve != elliptic.P256() {
		return nil, errors.New("credential public key is not P-256")
	}
	b, err := pub.Bytes()
	if err != nil {
		return nil, fmt.Errorf("credential public key: %w", err)
	}
	if len(b) != 65 {
		return nil, errors.New("credential public key has the wrong encoding")
	}
	return b, nil
}

// Fixed certificate fields: every attestation certificate looks alike
// apart from its key, serial and signature, so two registrations cannot
// be linked through it.
var (
	certSubject   = pkix.Name{CommonName: "tpm-fido U2F"}
	certNotBefore = time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	certNotAfter  = time.Date(9999, 12, 31, 23, 59, 59, 0, time.UTC)
)

// attestationCertificate makes a self-signed X.509 certificate for the
// credential's own key, signed by that key through the store.
func (h *Handler) attestationCertificate(cred *tpmstore.Credential) ([]byte, error) {
	serial, err := rand.Int(h.cfg.Rand, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	serial.Add(serial, big.NewInt(1)) // positive, never zero
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               certSubject,
		Issuer:                certSubject,
		NotBefore:             certNotBefore,
		NotAfter:              certNotAfter,
		SignatureAlgorithm:    x509.ECDSAWithSHA256,
		BasicConstraintsValid: true,
		IsCA:                  false,
	}
	signer := credentialSigner{store: h.cfg.Store, cred: cred}
	der, err := x509.CreateCertificate(h.cfg.Rand, tmpl, tmpl, cred.PublicKey, signer)
	if err != nil {
		return nil, fmt.Errorf("attestation certificate: %w", err)
	}
	return der, nil
}

// credentialSigner is a crypto.Signer whose private key is a credential
// key held by the store.
type credentialSigner struct {
	store Store
	cred  *tpmstore.Credential
}

func (s credentialSigner) Public() crypto.PublicKey { return s.cred.PublicKey }

func (s credentialSigner) Sign(_ io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error) {
	if opts == nil || opts.HashFunc() != crypto.SHA256 || len(digest) != sha256.Size {
		return nil, errors.New("u2f: credential keys sign SHA-256 digests only")
	}
	return s.store.Sign(s.cred, digest)
}

// siteLabel is what a prompt shows for an application parameter: U2F
// gives only its SHA-256, so show a prefix the user can compare.
func siteLabel(app [32]byte) string {
	return "U2F site " + hex.EncodeToString(app[:4])
}

var _ ctap.Handler = (*Handler)(nil)
