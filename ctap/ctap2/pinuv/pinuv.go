// Package pinuv implements the PIN/UV auth protocols 1 and 2 and the
// pinUvAuthToken state of CTAP 2.1 §6.5: key agreement, shared-secret
// derivation, encrypt/decrypt/authenticate, and the token's permissions,
// relying-party binding and lifetime. It is also the one home of the PIN
// policy and the PIN hash, which clientPIN and the command line share.
//
// Token lifetime (CTAP 2.1 §6.5.2.1 leaves the figures to the
// authenticator; these are ours): a fresh token must be used for the
// first time within InitialUsageLimit (30 s) of being issued, or it
// expires unused; once used it stays valid until MaxUsagePeriod
// (10 minutes) after issue. Issuing a new token, Regenerate and ResetToken
// end the old one at once. A token that expires is also wiped when it
// expires, not only when it is next looked at: one timer runs while a
// token lives (none while none does), so the token and the PIN hash kept
// with it do not stay in memory past their lifetime while the daemon is
// idle.
package pinuv

import (
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/cose"
)

// Permission is a set of pinUvAuthToken permissions. The low eight bits
// are the permission bits of CTAP 2.1 §6.5.5.7, as clients send them;
// higher bits are the authenticator's own and never come from the wire.
type Permission uint16

// Permissions.
const (
	PermMakeCredential       Permission = 0x01
	PermGetAssertion         Permission = 0x02
	PermCredentialManagement Permission = 0x04
	PermBioEnrollment        Permission = 0x08
	PermLargeBlobWrite       Permission = 0x10
	PermAuthenticatorConfig  Permission = 0x20

	// PermCredentialManagementPreview is what the prototype
	// credentialManagement command (0x41, CTAP 2.1-PRE) asks of a token.
	// Not a wire bit: clientPIN grants it with cm, and to tokens from the
	// legacy getPinToken (0x05), which 2.0-era clients pair with 0x41.
	PermCredentialManagementPreview Permission = 0x100
)

// Token lifetime limits (see the package comment).
const (
	InitialUsageLimit = 30 * time.Second
	MaxUsagePeriod    = 10 * time.Minute
)

// TokenSize is the length of a pinUvAuthToken in bytes.
const TokenSize = 32

// PIN policy (CTAP 2.1 §6.5.1, §6.5.5.5), the one rule for PINs set by
// clientPIN and by the tpm-fido command line.
const (
	// MinPINLength is the fewest Unicode code points a PIN may have
	// (getInfo's minPINLength).
	MinPINLength = 4
	// MaxPINBytes is the most bytes of UTF-8 a PIN may have.
	MaxPINBytes = 63
	// PINHashSize is the length of PINHash's result.
	PINHashSize = 16
)

// PolicyError is a PIN that breaks the policy; its message says how, in
// words for a user. It matches ctap.StatusPINPolicyViolation with
// errors.Is, which is what clientPIN answers.
type PolicyError struct{ reason string }

func (e *PolicyError) Error() string { return e.reason }

// Unwrap makes errors.Is(err, ctap.StatusPINPolicyViolation) hold.
func (e *PolicyError) Unwrap() error { return ctap.StatusPINPolicyViolation }

// CheckPIN applies the PIN policy to pin (without padding): valid UTF-8,
// at least MinPINLength code points, at most MaxPINBytes bytes. Failure
// is a *PolicyError.
func CheckPIN(pin []byte) error {
	switch {
	case !utf8.Valid(pin):
		return &PolicyError{"the PIN is not valid UTF-8"}
	case utf8.RuneCount(pin) < MinPINLength:
		return &PolicyError{fmt.Sprintf("the PIN needs at least %d characters", MinPINLength)}
	case len(pin) > MaxPINBytes:
		return &PolicyError{fmt.Sprintf("the PIN may have at most %d bytes", MaxPINBytes)}
	}
	return nil
}

// PINHash is LEFT(SHA-256(pin), 16): what clientPIN's pinHashEnc carries
// and what the key store keeps the PIN as.
func PINHash(pin []byte) [PINHashSize]byte {
	sum := sha256.Sum256(pin)
	return [PINHashSize]byte(sum[:PINHashSize])
}

// Protocol is one PIN/UV auth protocol (1 or 2).
type Protocol interface {
	Version() uint64
	// SharedSecret does ECDH between the authenticator's key-agreement key
	// and platformKey and derives the protocol's shared secret. A point
	// that is not on P-256 is ctap.StatusInvalidParameter, never a panic.
	SharedSecret(platformKey cose.Key) ([]byte, error)
	Encrypt(sharedSecret, plaintext []byte) ([]byte, error)
	Decrypt(sharedSecret, ciphertext []byte) ([]byte, error)
	Authenticate(key, message []byte) []byte
	Verify(key, message, signature []byte) bool
}

// ErrMalformed is wrapped (with ctap.StatusInvalidParameter) by Decrypt
// and Encrypt when a key or ciphertext has the wrong length, and by
// SharedSecret for a platform key that is not a valid P-256 point.
var ErrMalformed = errors.New("pinuv: malformed input")

func malformed(format string, args ...any) error {
	return fmt.Errorf("%w: %w: %s", ctap.StatusInvalidParameter, ErrMalformed, fmt.Sprintf(format, args...))
}

// AfterFunc arms a one-shot timer that calls f after d and returns the
// function that disarms it (time.AfterFunc's Timer.Stop). Tests inject
// their own with NewStateTimer.
type AfterFunc func(d time.Duration, f func()) (stop func() bool)

func timeAfterFunc(d time.Duration, f func()) func() bool { return time.AfterFunc(d, f).Stop }

// State is the authenticator's PIN/UV state: one key-agreement key pair
// (shared by both protocols) and the current pinUvAuthToken. Safe for
// concurrent use.
type State struct {
	mu        sync.Mutex
	rand      io.Reader
	now       func() time.Time
	afterFunc AfterFunc
	// disarm stops the expiry timer; nil while none is armed (no token).
	disarm func() bool
	// gen numbers the tokens, so that a timer of an ended token, which
	// may fire after it was disarmed, does nothing.
	gen uint64

	key *ecdh.PrivateKey

	token       []byte // nil when no token is in use
	perms       Permission
	rpID        string // "" while unbound
	issued      time.Time
	used        bool // the token has been used at least once
	powerCycled bool // PIN auth blocked until the daemon restarts
	// uvSecret is what verified the user for the current token (the PIN
	// hash the TPM checked): the key store needs it to use PIN-bound
	// keys. It lives exactly as long as the token.
	uvSecret []byte
}

// NewState generates the key-agreement key; no token is in use.
// rand defaults to crypto/rand.Reader and now to time.Now.
func NewState(rnd io.Reader, now func() time.Time) (*State, error) {
	return NewStateTimer(rnd, now, nil)
}

// NewStateTimer is NewState with the timer that wipes a token when it
// expires (time.AfterFunc when nil), for tests with a fake clock.
func NewStateTimer(rnd io.Reader, now func() time.Time, afterFunc AfterFunc) (*State, error) {
	if rnd == nil {
		rnd = rand.Reader
	}
	if now == nil {
		now = time.Now
	}
	if afterFunc == nil {
		afterFunc = timeAfterFunc
	}
	s := &State{rand: rnd, now: now, afterFunc: afterFunc}
	if err := s.Regenerate(); err != nil {
		return nil, err
	}
	return s, nil
}

// Protocol returns protocol 1 or 2; any other version is
// ctap.StatusInvalidParameter.
func (s *State) Protocol(version uint64) (Protocol, error) {
	switch version {
	case 1:
		return protocolOne{s}, nil
	case 2:
		return protocolTwo{s}, nil
	}
	return nil, ctap.StatusInvalidParameter
}

// KeyAgreement returns the authenticator's public key-agreement key
// (kty EC2, alg -25 ECDH-ES+HKDF-256, crv P-256).
func (s *State) KeyAgreement(version uint64) (cose.Key, error) {
	if _, err := s.Protocol(version); err != nil {
		return cose.Key{}, err
	}
	s.mu.Lock()
	pub := s.key.PublicKey()
	s.mu.Unlock()
	return cose.ECDHES(pub)
}

// Regenerate makes a new key-agreement key and invalidates the token
// (power-up, authenticatorReset, and after a PIN is set or changed).
func (s *State) Regenerate() error {
	k, err := ecdh.P256().GenerateKey(s.rand)
	if err != nil {
		return fmt.Errorf("pinuv: generating key-agreement key: %w", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.key = k
	s.stopLocked()
	return nil
}

// ResetToken ends the current token without touching the key-agreement
// key (changePIN, §6.5.5.6).
func (s *State) ResetToken() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
}

func (s *State) stopLocked() {
	if s.disarm != nil {
		s.disarm()
		s.disarm = nil
	}
	clear(s.token)
	s.token = nil
	clear(s.uvSecret)
	s.uvSecret = nil
	s.perms = 0
	s.rpID = ""
	s.used = false
}

// IssueToken resets the token to a fresh random value, grants perms bound
// to rpID (may be empty: bound at first use) and starts its lifetime.
// It returns the token, which the caller encrypts for the platform.
// It returns nil, with no token in use, only if the random source fails.
func (s *State) IssueToken(perms Permission, rpID string) []byte {
	return s.IssueTokenWithSecret(perms, rpID, nil)
}

// IssueTokenWithSecret is IssueToken that also keeps secret, what
// verified the user (the PIN hash), for exactly the token's lifetime:
// UVSecret returns it while the token is in use and not expired; any
// end of the token (expiry, a new token, Regenerate, ResetToken) clears
// it.
func (s *State) IssueTokenWithSecret(perms Permission, rpID string, secret []byte) []byte {
	tok := make([]byte, TokenSize)
	_, err := io.ReadFull(s.rand, tok)
	s.mu.Lock()
	defer s.mu.Unlock()
	s.stopLocked()
	if err != nil {
		return nil
	}
	s.token = tok
	s.perms = perms
	s.rpID = rpID
	s.issued = s.now()
	s.uvSecret = append([]byte(nil), secret...)
	s.gen++
	s.armLocked()
	return append([]byte(nil), tok...)
}

// deadlineLocked is when the current token expires: InitialUsageLimit
// after issue until it is first used, then MaxUsagePeriod.
func (s *State) deadlineLocked() time.Time {
	if s.used {
		return s.issued.Add(MaxUsagePeriod)
	}
	return s.issued.Add(InitialUsageLimit)
}

// armLocked arms the one expiry timer for the current token.
func (s *State) armLocked() {
	gen := s.gen
	d := s.deadlineLocked().Sub(s.now())
	s.disarm = s.afterFunc(d, func() { s.expire(gen) })
}

// expire runs when the timer of token gen fires: it wipes the token (and
// the secret kept with it) if that token is still the current one and
// its deadline has passed, or re-arms for the later deadline of a token
// used meanwhile.
func (s *State) expire(gen uint64) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if gen != s.gen || s.token == nil {
		return // ended, or replaced, before its timer ran
	}
	s.disarm = nil // this timer has fired
	now := s.now()
	if now.Before(s.issued) || !now.Before(s.deadlineLocked()) {
		s.stopLocked()
		return
	}
	s.armLocked()
}

// UVSecret returns a copy of the secret given with the current token, if
// a token is in use, not expired, and was issued with one.
func (s *State) UVSecret() ([]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.liveLocked() || len(s.uvSecret) == 0 {
		return nil, false
	}
	return append([]byte(nil), s.uvSecret...), true
}

// liveLocked reports whether a token is in use and not expired, ending
// an expired one.
func (s *State) liveLocked() bool {
	if s.token == nil {
		return false
	}
	now := s.now()
	if now.Before(s.issued) || now.After(s.deadlineLocked()) {
		s.stopLocked()
		return false
	}
	return true
}

// VerifyParam checks pinUvAuthParam = authenticate(token, message) under
// the given protocol, with the token in use and not expired. Failure is
// ctap.StatusPINAuthInvalid. A successful check counts as the token's use.
func (s *State) VerifyParam(version uint64, message, param []byte) error {
	p, err := s.Protocol(version)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.liveLocked() {
		return ctap.StatusPINAuthInvalid
	}
	if !p.Verify(s.token, message, param) {
		return ctap.StatusPINAuthInvalid
	}
	s.used = true
	return nil
}

// Authorize checks that the current token has perm and, when rpID is
// non-empty, is bound to rpID (binding it if it was unbound). Failure is
// ctap.StatusPINAuthInvalid.
func (s *State) Authorize(perm Permission, rpID string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.liveLocked() || s.perms&perm != perm || perm == 0 {
		return ctap.StatusPINAuthInvalid
	}
	if rpID == "" {
		return nil
	}
	if s.rpID == "" {
		s.rpID = rpID
		return nil
	}
	if s.rpID != rpID {
		return ctap.StatusPINAuthInvalid
	}
	return nil
}

// AuthorizeRPIDHash checks that the current token has perm and, if it is
// bound to an RP, that the RP's ID hashes to rpIDHash. It never binds the
// token (credentialManagement, §6.8). A nil rpIDHash checks perm only.
// Failure is ctap.StatusPINAuthInvalid.
func (s *State) AuthorizeRPIDHash(perm Permission, rpIDHash []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.liveLocked() || s.perms&perm != perm || perm == 0 {
		return ctap.StatusPINAuthInvalid
	}
	if rpIDHash == nil || s.rpID == "" {
		return nil
	}
	h := sha256.Sum256([]byte(s.rpID))
	if subtle.ConstantTimeCompare(h[:], rpIDHash) != 1 {
		return ctap.StatusPINAuthInvalid
	}
	return nil
}

// AuthorizeUnbound checks that the current token has perm and is not
// bound to any RP (getCredsMetadata and enumerateRPs, §6.8.2, §6.8.3).
// Failure is ctap.StatusPINAuthInvalid.
func (s *State) AuthorizeUnbound(perm Permission) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.liveLocked() || s.perms&perm != perm || perm == 0 || s.rpID != "" {
		return ctap.StatusPINAuthInvalid
	}
	return nil
}

// ClearPermissionsExceptLBW drops every permission but largeBlobWrite
// (after a makeCredential or getAssertion used the token with UP).
func (s *State) ClearPermissionsExceptLBW() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.perms &= PermLargeBlobWrite
}

// NotePINAuthBlocked records that three wrong PINs in a row blocked PIN
// authentication until the authenticator is power cycled (restarted).
func (s *State) NotePINAuthBlocked() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.powerCycled = true
}

// ClearPINAuthBlocked forgets NotePINAuthBlocked: a new PIN was set
// (after authenticatorReset, which also clears the store's count).
func (s *State) ClearPINAuthBlocked() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.powerCycled = false
}

// PowerCycleRequired reports whether NotePINAuthBlocked was called since
// this State was made (getPINRetries' powerCycleState).
func (s *State) PowerCycleRequired() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.powerCycled
}

// ecdhZ does the ECDH of the authenticator's key with the platform's
// point and returns Z, the shared point's x coordinate.
func (s *State) ecdhZ(k cose.Key) ([]byte, error) {
	pub, err := k.ECDH() // rejects points off the curve
	if err != nil {
		return nil, malformed("key agreement: %v", err)
	}
	s.mu.Lock()
	priv := s.key
	s.mu.Unlock()
	z, err := priv.ECDH(pub)
	if err != nil {
		return nil, malformed("ecdh: %v", err)
	}
	return z, nil
}

func hmacSHA256(key, msg []byte) []byte {
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	return m.Sum(nil)
}

// cbc runs AES-256-CBC over whole blocks, encrypting or decrypting
// (an empty ciphertext is refused; an empty plaintext is not).
func cbc(decrypt bool, key, iv, in []byte) ([]byte, error) {
	if len(in)%aes.BlockSize != 0 || (decrypt && len(in) == 0) {
		return nil, malformed("%d bytes are not whole blocks", len(in))
	}
	b, err := aes.NewCipher(key)
	if err != nil {
		return nil, malformed("aes key: %v", err)
	}
	mode := cipher.NewCBCEncrypter(b, iv)
	if decrypt {
		mode = cipher.NewCBCDecrypter(b, iv)
	}
	out := make([]byte, len(in))
	mode.CryptBlocks(out, in)
	return out, nil
}

// protocolOne is PIN/UV auth protocol 1 (CTAP 2.1 §6.5.6).
type protocolOne struct{ s *State }

func (protocolOne) Version() uint64 { return 1 }

// SharedSecret is SHA-256(Z).
func (p protocolOne) SharedSecret(k cose.Key) ([]byte, error) {
	z, err := p.s.ecdhZ(k)
	if err != nil {
		return nil, err
	}
	h := sha256.Sum256(z)
	return h[:], nil
}

var zeroIV = make([]byte, aes.BlockSize)

// Encrypt is AES-256-CBC with an all-zero IV.
func (protocolOne) Encrypt(key, plaintext []byte) ([]byte, error) {
	if len(key) != 32 {
		return nil, malformed("protocol 1 key of %d bytes", len(key))
	}
	return cbc(false, key, zeroIV, plaintext)
}

func (protocolOne) Decrypt(key, ciphertext []byte) ([]byte, error) {
	if len(key) != 32 {
		return nil, malformed("protocol 1 key of %d bytes", len(key))
	}
	return cbc(true, key, zeroIV, ciphertext)
}

// Authenticate is LEFT(HMAC-SHA-256(key, message), 16).
func (protocolOne) Authenticate(key, message []byte) []byte {
	return hmacSHA256(key, message)[:16]
}

func (p protocolOne) Verify(key, message, signature []byte) bool {
	return len(signature) == 16 && hmac.Equal(p.Authenticate(key, message), signature)
}

// protocolTwo is PIN/UV auth protocol 2 (CTAP 2.1 §6.5.7).
type protocolTwo struct{ s *State }

func (protocolTwo) Version() uint64 { return 2 }

var zeroSalt = make([]byte, 32)

// SharedSecret is HKDF-SHA-256(Z, "CTAP2 HMAC key") ‖
// HKDF-SHA-256(Z, "CTAP2 AES key"), each 32 bytes with a zero salt.
func (p protocolTwo) SharedSecret(k cose.Key) ([]byte, error) {
	z, err := p.s.ecdhZ(k)
	if err != nil {
		return nil, err
	}
	hmacKey, err := hkdf.Key(sha256.New, z, zeroSalt, "CTAP2 HMAC key", 32)
	if err != nil {
		return nil, fmt.Errorf("pinuv: hkdf: %w", err)
	}
	aesKey, err := hkdf.Key(sha256.New, z, zeroSalt, "CTAP2 AES key", 32)
	if err != nil {
		return nil, fmt.Errorf("pinuv: hkdf: %w", err)
	}
	return append(hmacKey, aesKey...), nil
}

// Encrypt is IV ‖ AES-256-CBC(AES key, IV, plaintext) with a random IV.
func (p protocolTwo) Encrypt(key, plaintext []byte) ([]byte, error) {
	if len(key) != 64 {
		return nil, malformed("protocol 2 shared secret of %d bytes", len(key))
	}
	iv := make([]byte, aes.BlockSize)
	if _, err := io.ReadFull(p.s.rand, iv); err != nil {
		return nil, fmt.Errorf("pinuv: random IV: %w", err)
	}
	ct, err := cbc(false, key[32:], iv, plaintext)
	if err != nil {
		return nil, err
	}
	return append(iv, ct...), nil
}

func (protocolTwo) Decrypt(key, ciphertext []byte) ([]byte, error) {
	if len(key) != 64 {
		return nil, malformed("protocol 2 shared secret of %d bytes", len(key))
	}
	if len(ciphertext) < aes.BlockSize {
		return nil, malformed("protocol 2 ciphertext of %d bytes", len(ciphertext))
	}
	return cbc(true, key[32:], ciphertext[:aes.BlockSize], ciphertext[aes.BlockSize:])
}

// Authenticate is HMAC-SHA-256 keyed with the shared secret's HMAC key
// (its first 32 bytes) or with the whole 32-byte token.
func (protocolTwo) Authenticate(key, message []byte) []byte {
	if len(key) > 32 {
		key = key[:32]
	}
	return hmacSHA256(key, message)
}

func (p protocolTwo) Verify(key, message, signature []byte) bool {
	return len(signature) == 32 && hmac.Equal(p.Authenticate(key, message), signature)
}
