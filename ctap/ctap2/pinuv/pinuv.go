// Package pinuv implements the PIN/UV auth protocols 1 and 2 and the
// pinUvAuthToken state of CTAP 2.1 §6.5: key agreement, shared-secret
// derivation, encrypt/decrypt/authenticate, and the token's permissions,
// relying-party binding and lifetime.
//
// CONTRACT (agreed between the ctap2 handlers and this package; the
// implementation replaces the placeholders below, keeping the API):
package pinuv

import (
	"errors"
	"io"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap"
)

// Permission is a pinUvAuthToken permission bit (CTAP 2.1 §6.5.5.7).
type Permission uint8

// Permissions.
const (
	PermMakeCredential       Permission = 0x01
	PermGetAssertion         Permission = 0x02
	PermCredentialManagement Permission = 0x04
	PermBioEnrollment        Permission = 0x08
	PermLargeBlobWrite       Permission = 0x10
	PermAuthenticatorConfig  Permission = 0x20
)

// COSEKey is a P-256 ECDH public key in COSE_Key form as CTAP uses it for
// key agreement: kty 2 (EC2), alg -25 (ECDH-ES+HKDF-256), crv 1 (P-256).
type COSEKey struct {
	Kty int64  `cbor:"1,keyasint"`
	Alg int64  `cbor:"3,keyasint"`
	Crv int64  `cbor:"-1,keyasint"`
	X   []byte `cbor:"-2,keyasint"`
	Y   []byte `cbor:"-3,keyasint"`
}

// Protocol is one PIN/UV auth protocol (1 or 2).
type Protocol interface {
	Version() uint64
	// SharedSecret does ECDH between the authenticator's key-agreement key
	// and platformKey and derives the protocol's shared secret. A point
	// that is not on P-256 is ctap.StatusInvalidParameter, never a panic.
	SharedSecret(platformKey COSEKey) ([]byte, error)
	Encrypt(sharedSecret, plaintext []byte) ([]byte, error)
	Decrypt(sharedSecret, ciphertext []byte) ([]byte, error)
	Authenticate(key, message []byte) []byte
	Verify(key, message, signature []byte) bool
}

// ErrPlaceholder marks code not written yet.
var ErrPlaceholder = errors.New("pinuv: not implemented")

// State is the authenticator's PIN/UV state: one key-agreement key pair
// (shared by both protocols) and the current pinUvAuthToken. Safe for
// concurrent use.
type State struct{}

// NewState generates the key-agreement key and an initial token.
func NewState(rand io.Reader, now func() time.Time) (*State, error) {
	return &State{}, nil
}

// Protocol returns protocol 1 or 2; any other version is
// ctap.StatusInvalidParameter.
func (s *State) Protocol(version uint64) (Protocol, error) {
	return nil, ctap.StatusInvalidParameter
}

// KeyAgreement returns the authenticator's public key-agreement key.
func (s *State) KeyAgreement(version uint64) (COSEKey, error) {
	return COSEKey{}, ctap.StatusInvalidParameter
}

// Regenerate makes a new key-agreement key and invalidates the token
// (power-up, authenticatorReset, and after a PIN is set or changed).
func (s *State) Regenerate() error { return ErrPlaceholder }

// IssueToken resets the token to a fresh random value, grants perms bound
// to rpID (may be empty: bound at first use) and starts its lifetime.
// It returns the token, which the caller encrypts for the platform.
func (s *State) IssueToken(perms Permission, rpID string) []byte { return nil }

// VerifyParam checks pinUvAuthParam = authenticate(token, message) under
// the given protocol, with the token in use and not expired. Failure is
// ctap.StatusPINAuthInvalid.
func (s *State) VerifyParam(version uint64, message, param []byte) error {
	return ctap.StatusPINAuthInvalid
}

// Authorize checks that the current token has perm and, when rpID is
// non-empty, is bound to rpID (binding it if it was unbound). Failure is
// ctap.StatusPINAuthInvalid.
func (s *State) Authorize(perm Permission, rpID string) error {
	return ctap.StatusPINAuthInvalid
}

// ClearPermissionsExceptLBW drops every permission but largeBlobWrite
// (after a makeCredential or getAssertion used the token with UP).
func (s *State) ClearPermissionsExceptLBW() {}
