// Package ctap2test supports tests of the CTAP2 layer and of code built
// on it: a software key store implementing ctap2.Store (keys are ordinary
// in-memory ECDSA keys: never use it outside tests), a Caller that sends
// requests to the authenticator in process and checks every answer as a
// strict client would, and a clock to inject.
package ctap2test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/subtle"
	"errors"
	"fmt"
	"sync"

	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// ErrInjected is returned by a FakeStore method named in Fail.
var ErrInjected = errors.New("ctap2test: injected failure")

const (
	credIDLength = 48
	// PINRetries is how many PIN retries a new or reset FakeStore has, as
	// tpmstore has.
	PINRetries = 8
	// maxConsecutiveFails wrong PINs in a row block PIN checks until a
	// restart (ResetPINState), as in tpmstore.
	maxConsecutiveFails = 3
)

type fakeCred struct {
	rpIDHash   [32]byte
	key        *ecdsa.PrivateKey
	opts       tpmstore.CredentialOptions
	pinBound   bool      // signs only with the current PIN (SignWithPIN)
	credRandom [2][]byte // [0] without UV, [1] with UV
}

// FakeStore is an in-memory ctap2.Store. The zero value is not usable;
// call NewFakeStore. Safe for concurrent use.
type FakeStore struct {
	mu      sync.Mutex
	creds   map[string]*fakeCred
	counter uint32
	pin     *[16]byte
	retries int
	fails   int // wrong PINs in a row

	// PINError, when set, is what VerifyPIN and ChangePIN return without
	// trying the PIN (a TPM failure, or tpmstore.ErrTPMLockout).
	PINError error

	// ResidentList holds the discoverable credentials.
	*ResidentList

	// Fail makes the named method ("Sign", "CreateCredential",
	// "NextCounter", "PutResident", "ListResidents", "Reset", "CredRandom")
	// return ErrInjected.
	Fail map[string]bool
	// Calls counts method calls by name.
	Calls map[string]int
}

// NewFakeStore returns an empty store holding at most maxResidents
// discoverable credentials (0: 16).
func NewFakeStore(maxResidents int) *FakeStore {
	if maxResidents == 0 {
		maxResidents = 16
	}
	return &FakeStore{
		creds:        map[string]*fakeCred{},
		retries:      PINRetries,
		ResidentList: NewResidentList(maxResidents),
		Fail:         map[string]bool{},
		Calls:        map[string]int{},
	}
}

func (s *FakeStore) call(name string) error {
	s.Calls[name]++
	if s.Fail[name] {
		return fmt.Errorf("%s: %w", name, ErrInjected)
	}
	return nil
}

// PrivateKey returns the private key of a credential ID, for tests that
// need to check what the authenticator did with it.
func (s *FakeStore) PrivateKey(id []byte) *ecdsa.PrivateKey {
	s.mu.Lock()
	defer s.mu.Unlock()
	if c, ok := s.creds[string(id)]; ok {
		return c.key
	}
	return nil
}

// CreateCredential makes a new P-256 key and a random credential ID.
func (s *FakeStore) CreateCredential(rpIDHash [32]byte, opts tpmstore.CredentialOptions) (*tpmstore.Credential, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.call("CreateCredential"); err != nil {
		return nil, err
	}
	// As the TPM store: a credProtect 3 key is bound to the PIN.
	pinBound := opts.CredProtect == tpmstore.CredProtectUVRequired
	if pinBound && s.pin == nil {
		return nil, tpmstore.ErrPINNotSet
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	id := make([]byte, credIDLength)
	c := &fakeCred{rpIDHash: rpIDHash, key: key, opts: opts, pinBound: pinBound,
		credRandom: [2][]byte{make([]byte, 32), make([]byte, 32)}}
	for _, b := range [][]byte{id, c.credRandom[0], c.credRandom[1]} {
		if _, err := rand.Read(b); err != nil {
			return nil, err
		}
	}
	s.creds[string(id)] = c
	return &tpmstore.Credential{ID: id, RPIDHash: rpIDHash, PublicKey: &key.PublicKey, Options: opts, PINBound: pinBound}, nil
}

// OpenCredential returns tpmstore.ErrCredentialInvalid for an ID this
// store did not make for rpIDHash.
func (s *FakeStore) OpenCredential(rpIDHash [32]byte, id []byte) (*tpmstore.Credential, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.Calls["OpenCredential"]++
	c, ok := s.creds[string(id)]
	if !ok || c.rpIDHash != rpIDHash {
		return nil, tpmstore.ErrCredentialInvalid
	}
	return &tpmstore.Credential{ID: bytes.Clone(id), RPIDHash: rpIDHash, PublicKey: &c.key.PublicKey, Options: c.opts, PINBound: c.pinBound}, nil
}

func (s *FakeStore) lookup(c *tpmstore.Credential) (*fakeCred, error) {
	fc, ok := s.creds[string(c.ID)]
	if !ok || fc.rpIDHash != c.RPIDHash {
		return nil, tpmstore.ErrCredentialInvalid
	}
	return fc, nil
}

// Sign signs digest with the credential's key (ASN.1 DER); a PIN-bound
// credential gives tpmstore.ErrPINRequired.
func (s *FakeStore) Sign(c *tpmstore.Credential, digest []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.call("Sign"); err != nil {
		return nil, err
	}
	fc, err := s.lookup(c)
	if err != nil {
		return nil, err
	}
	if fc.pinBound {
		return nil, tpmstore.ErrPINRequired
	}
	return ecdsa.SignASN1(rand.Reader, fc.key, digest)
}

// SignWithPIN signs as Sign; a PIN-bound credential needs pinHash to be
// the current PIN's (as the TPM's policy would check).
func (s *FakeStore) SignWithPIN(c *tpmstore.Credential, digest []byte, pinHash [16]byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.call("SignWithPIN"); err != nil {
		return nil, err
	}
	fc, err := s.lookup(c)
	if err != nil {
		return nil, err
	}
	if fc.pinBound && (s.pin == nil || subtle.ConstantTimeCompare(s.pin[:], pinHash[:]) != 1) {
		return nil, errors.New("ctap2test: PIN-bound credential: wrong PIN hash")
	}
	return ecdsa.SignASN1(rand.Reader, fc.key, digest)
}

// CredRandom returns the credential's CredRandom for the UV state.
func (s *FakeStore) CredRandom(c *tpmstore.Credential, uv bool) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.call("CredRandom"); err != nil {
		return nil, err
	}
	fc, err := s.lookup(c)
	if err != nil {
		return nil, err
	}
	if uv {
		return bytes.Clone(fc.credRandom[1]), nil
	}
	return bytes.Clone(fc.credRandom[0]), nil
}

// NextCounter returns 1, 2, 3, ...
func (s *FakeStore) NextCounter() (uint32, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.call("NextCounter"); err != nil {
		return 0, err
	}
	s.counter++
	return s.counter, nil
}

// PutResident stores r, replacing one with the same RP and user ID.
func (s *FakeStore) PutResident(r tpmstore.Resident) error {
	s.mu.Lock()
	err := s.call("PutResident")
	s.mu.Unlock()
	if err != nil {
		return err
	}
	return s.ResidentList.PutResident(r)
}

// ListResidents pages through an RP's discoverable credentials.
func (s *FakeStore) ListResidents(rpIDHash [32]byte, f tpmstore.ResidentFilter, after tpmstore.Cursor, limit int) ([]tpmstore.Resident, tpmstore.Cursor, error) {
	s.mu.Lock()
	err := s.call("ListResidents")
	s.mu.Unlock()
	if err != nil {
		return nil, nil, err
	}
	return s.ResidentList.ListResidents(rpIDHash, f, after, limit)
}

// PINIsSet reports whether a PIN hash is stored.
func (s *FakeStore) PINIsSet() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pin != nil
}

// SetPIN stores the first PIN hash.
func (s *FakeStore) SetPIN(pinHash [16]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pin != nil {
		return tpmstore.ErrPINAlreadySet
	}
	s.pin = &pinHash
	s.retries = PINRetries
	return nil
}

// ChangePIN replaces the PIN hash after checking the current one as
// VerifyPIN does.
func (s *FakeStore) ChangePIN(current, next [16]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.verifyLocked(current); err != nil {
		return err
	}
	s.pin = &next
	return nil
}

// VerifyPIN checks a PIN hash as tpmstore does: a wrong one spends a
// retry (ErrPINInvalid, ErrPINBlocked at the last), and the third wrong
// one in a row is ErrPINAuthBlocked, after which no PIN is tried until
// ResetPINState or Reset.
func (s *FakeStore) VerifyPIN(pinHash [16]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.verifyLocked(pinHash)
}

func (s *FakeStore) verifyLocked(pinHash [16]byte) error {
	switch {
	case s.PINError != nil:
		return s.PINError
	case s.pin == nil:
		return tpmstore.ErrPINNotSet
	case s.retries <= 0:
		return tpmstore.ErrPINBlocked
	case s.fails >= maxConsecutiveFails:
		return tpmstore.ErrPINAuthBlocked
	case subtle.ConstantTimeCompare(s.pin[:], pinHash[:]) == 1:
		s.retries = PINRetries
		s.fails = 0
		return nil
	}
	s.retries--
	s.fails++
	switch {
	case s.retries <= 0:
		return tpmstore.ErrPINBlocked
	case s.fails >= maxConsecutiveFails:
		return tpmstore.ErrPINAuthBlocked
	}
	return tpmstore.ErrPINInvalid
}

// PINHash returns the stored PIN hash, if a PIN is set.
func (s *FakeStore) PINHash() ([16]byte, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pin == nil {
		return [16]byte{}, false
	}
	return *s.pin, true
}

// ResetPINState sets the retries left and forgets the wrong PINs in a
// row, as a restart with that many retries persisted would.
func (s *FakeStore) ResetPINState(retries int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.retries, s.fails = retries, 0
}

// PINRetries returns the retries left.
func (s *FakeStore) PINRetries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.retries
}

// Reset forgets every credential, the PIN and the retries.
func (s *FakeStore) Reset() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.call("Reset"); err != nil {
		return err
	}
	s.creds = map[string]*fakeCred{}
	s.ResidentList.Clear()
	s.pin = nil
	s.retries, s.fails = PINRetries, 0
	return nil
}
