package tpmstore

import (
	"errors"
	"fmt"
	"io"

	"github.com/google/go-tpm/tpm2"
	bolt "go.etcd.io/bbolt"
)

// The PIN check lives in the TPM: the PIN hash is the authValue of a
// sealed keyed-hash object without noDA, so every wrong PIN also counts
// against the TPM's dictionary-attack protection, and a copied state
// directory gives an attacker nothing to guess against offline.

// PINIsSet reports whether a PIN is set.
func (s *Store) PINIsSet() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pinPub != nil
}

// PINRetries returns the persisted number of PIN retries left (8 when no
// PIN is set).
func (s *Store) PINRetries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pinRetries
}

// SetPIN sets the first PIN. pinHash is LEFT(SHA-256(pin), 16).
// ErrPINAlreadySet when a PIN exists.
func (s *Store) SetPIN(pinHash [16]byte) error {
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	if s.pinPub != nil {
		return ErrPINAlreadySet
	}
	return s.replacePIN(pinHash)
}

// ChangePIN checks current exactly like VerifyPIN (same errors, same
// retry accounting, the same dictionary-attack guard) and replaces the
// PIN with next in the same TPM command: TPM2_ObjectChangeAuth, which
// needs the current PIN as the object's authorisation and keeps the PIN
// object's name, so PIN-bound credentials keep working with the new PIN.
// TPM commands: GetCapability, [FlushContext], Load, ObjectChangeAuth,
// FlushContext.
//
// The PIN object's earlier blob, in a copy of state.db from before the
// change, still takes the old PIN (the TPM cannot revoke a blob); see
// docs/threat-model.md.
func (s *Store) ChangePIN(current, next [16]byte) error {
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	var priv []byte
	err := s.pinAttempt(func() ([][]byte, error) {
		var err error
		priv, err = s.changePINInTPM(current, next)
		return [][]byte{keyPINPriv, priv}, err
	})
	if err != nil {
		return err
	}
	s.pinPriv = priv
	return nil
}

// replacePIN creates the PIN object for pinHash (TPM2_Create, not
// loaded) and persists it with full retries.
func (s *Store) replacePIN(pinHash [16]byte) error {
	secret := make([]byte, 16)
	if _, err := io.ReadFull(s.rand, secret); err != nil {
		return fmt.Errorf("tpmstore: random: %w", err)
	}
	var rsp *tpm2.CreateResponse
	err := s.withReload(func() error {
		// TPM2_Create needs a free object slot while it builds the object.
		if err := s.makeRoom(); err != nil {
			return err
		}
		var err error
		rsp, err = tpm2.Create{
			ParentHandle: s.srkAuth(),
			InSensitive: tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{
				UserAuth: tpm2.TPM2BAuth{Buffer: pinHash[:]},
				Data:     tpm2.NewTPMUSensitiveCreate(&tpm2.TPM2BSensitiveData{Buffer: secret}),
			}},
			InPublic: tpm2.New2B(pinObjectTemplate()),
		}.Execute(s.tpm)
		return err
	})
	if err != nil {
		return fmt.Errorf("tpmstore: create PIN object: %w", err)
	}
	pub, priv := rsp.OutPublic.Bytes(), rsp.OutPrivate.Buffer
	err = s.update(func(tx *bolt.Tx) error {
		return putAll(tx.Bucket(bucketMeta), keyPINPub, pub, keyPINPriv, priv, keyPINRetries, []byte{maxPINRetries})
	})
	if err != nil {
		return err
	}
	s.pinPub, s.pinPriv = pub, priv
	s.pinRetries, s.pinFails = maxPINRetries, 0
	return nil
}

// VerifyPIN checks pinHash in the TPM. Errors: ErrPINNotSet; ErrPINInvalid
// (retries decremented); ErrPINAuthBlocked after 3 wrong PINs in a row
// (until the Store is reopened); ErrPINBlocked when no retries are left;
// ErrTPMLockout (a *DAWaitError saying when to try again) when the PIN
// was not tried because one more failure could put the TPM into
// dictionary-attack lockout, or it is in lockout (retries not consumed).
// The decremented retry count is persisted before the TPM is asked, so a
// crash cannot give a free guess.
//
// TPM commands: GetCapability (the DA state) + Load + Unseal
// (+ FlushContext when a slot had to be freed, + FlushContext of the PIN
// object).
func (s *Store) VerifyPIN(pinHash [16]byte) error {
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	return s.verifyPIN(pinHash)
}

// setRetries persists n PIN retries, in the same transaction as the
// meta records kv (key, value, ...).
func (s *Store) setRetries(n int, kv ...[]byte) error {
	err := s.update(func(tx *bolt.Tx) error {
		return putAll(tx.Bucket(bucketMeta), append(kv, keyPINRetries, []byte{byte(n)})...)
	})
	if err != nil {
		return err
	}
	s.pinRetries = n
	return nil
}

func (s *Store) verifyPIN(pinHash [16]byte) error {
	return s.pinAttempt(func() ([][]byte, error) { return nil, s.checkPINInTPM(pinHash) })
}

// pinAttempt runs try, a TPM command authorised with a PIN, with the
// retry accounting and the dictionary-attack guard. When it succeeds,
// the meta records it returns (key, value, ...) are written in the
// transaction that restores the retries.
func (s *Store) pinAttempt(try func() (kv [][]byte, err error)) error {
	if s.pinPub == nil {
		return ErrPINNotSet
	}
	if s.pinRetries <= 0 {
		return ErrPINBlocked
	}
	if s.pinFails >= maxConsecutiveFails {
		return ErrPINAuthBlocked
	}
	// Never make the attempt that could lock the whole TPM.
	if err := s.daGuard(); err != nil {
		return err
	}
	before := s.pinRetries
	if err := s.setRetries(before - 1); err != nil {
		return err
	}
	var kv [][]byte
	err := s.withReload(func() (err error) {
		kv, err = try()
		return err
	})
	switch {
	case err == nil:
		s.pinFails = 0
		return s.setRetries(maxPINRetries, kv...)
	case errors.Is(err, tpm2.TPMRCAuthFail), errors.Is(err, tpm2.TPMRCBadAuth):
		s.pinFails++
		s.lastDAFailure = s.now()
		if s.pinRetries <= 0 {
			return ErrPINBlocked
		}
		if s.pinFails >= maxConsecutiveFails {
			return ErrPINAuthBlocked
		}
		return ErrPINInvalid
	case errors.Is(err, tpm2.TPMRCLockout):
		// The TPM did not look at the PIN (another program's failures
		// came between the check and the try): give the retry back.
		if rerr := s.setRetries(before); rerr != nil {
			return errors.Join(ErrTPMLockout, rerr)
		}
		if st, serr := ReadDAStatus(s.tpm); serr == nil {
			return &DAWaitError{DA: st, Wait: s.daWait(st)}
		}
		return fmt.Errorf("%w (%w)", ErrTPMLockout, err)
	default:
		var rc tpm2.TPMRC
		if errors.As(err, &rc) {
			// The TPM refused before any authorisation check.
			if rerr := s.setRetries(before); rerr != nil {
				return errors.Join(err, rerr)
			}
		}
		return err
	}
}

// checkPINInTPM loads the PIN object, unseals it with pinHash as the
// password and flushes it again: Load + Unseal + FlushContext (+ one
// FlushContext if a slot had to be freed).
func (s *Store) checkPINInTPM(pinHash [16]byte) error {
	h, err := s.loaded(slotPIN, s.pinPub, s.pinPriv)
	if err != nil {
		return err
	}
	_, uerr := tpm2.Unseal{ItemHandle: authOf(h, pinHash[:])}.Execute(s.tpm)
	s.slots.remove(slotPIN)
	if ferr := s.flush(h.Handle); ferr != nil {
		s.log.Warn("flush PIN object", "err", ferr)
	}
	if uerr != nil {
		return fmt.Errorf("tpmstore: check PIN: %w", uerr)
	}
	return nil
}

// changePINInTPM loads the PIN object and changes its authValue from
// current to next with TPM2_ObjectChangeAuth, returning the new private
// blob; the public area, and so the name, stay the same.
func (s *Store) changePINInTPM(current, next [16]byte) ([]byte, error) {
	h, err := s.loaded(slotPIN, s.pinPub, s.pinPriv)
	if err != nil {
		return nil, err
	}
	rsp, cerr := tpm2.ObjectChangeAuth{
		ObjectHandle: authOf(h, current[:]),
		ParentHandle: s.srk,
		NewAuth:      tpm2.TPM2BAuth{Buffer: next[:]},
	}.Execute(s.tpm)
	s.slots.remove(slotPIN)
	if ferr := s.flush(h.Handle); ferr != nil {
		s.log.Warn("flush PIN object", "err", ferr)
	}
	if cerr != nil {
		return nil, fmt.Errorf("tpmstore: change PIN: %w", cerr)
	}
	return rsp.OutPrivate.Buffer, nil
}
