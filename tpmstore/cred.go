package tpmstore

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"

	"github.com/google/go-tpm/tpm2"
	bolt "go.etcd.io/bbolt"
)

// Credential ID layout (version 1), at most 255 bytes:
//
//	version(1) ‖ nonce(16) ‖ AES-256-GCM(K_n, zero IV; plaintext; AD = rpIdHash ‖ version)
//	plaintext = flags(1) ‖ len(2) ‖ TPM2B_PRIVATE contents ‖ x(32) ‖ y(32)
//	K_n       = HMAC-SHA256(wrapping key, "tpm-fido credential id" ‖ nonce)
//
// Each ID has its own key K_n, so the all-zero GCM IV is never reused
// under one key. The public area is not stored: the template is fixed,
// so x and y rebuild it exactly (checked at creation).
const (
	credIDVersion  = 1
	credNonceSize  = 16
	credIDMaxSize  = 255
	credIDOverhead = 1 + credNonceSize + 16 // version, nonce, GCM tag
)

// Flag bits in the plaintext.
const (
	flagCredProtectMask = 0x03
	flagHMACSecret      = 0x04
	flagResident        = 0x08
	flagsKnown          = flagCredProtectMask | flagHMACSecret | flagResident
)

func (s *Store) idAEAD(nonce []byte) (cipher.AEAD, error) {
	m := hmac.New(sha256.New, s.wrapKey)
	m.Write([]byte("tpm-fido credential id"))
	m.Write(nonce)
	block, err := aes.NewCipher(m.Sum(nil))
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func idAD(rpIDHash [32]byte) []byte {
	return append(rpIDHash[:], credIDVersion)
}

func encodeFlags(o CredentialOptions) (byte, error) {
	cp := o.CredProtect
	if cp == 0 {
		cp = CredProtectUVOptional
	}
	if cp > CredProtectUVRequired {
		return 0, fmt.Errorf("tpmstore: credProtect %d out of range", o.CredProtect)
	}
	f := cp
	if o.HMACSecret {
		f |= flagHMACSecret
	}
	if o.Resident {
		f |= flagResident
	}
	return f, nil
}

// CreateCredential creates a P-256 signing key in the TPM bound to
// rpIDHash and returns it with its credential ID. The key stays loaded,
// so signing the attestation right after costs one more TPM command.
// TPM commands: CreateLoaded (+ FlushContext when the cache is full).
func (s *Store) CreateCredential(rpIDHash [32]byte, opts CredentialOptions) (*Credential, error) {
	flags, err := encodeFlags(opts)
	if err != nil {
		return nil, err
	}
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	nonce := make([]byte, credNonceSize)
	if _, err := io.ReadFull(s.rand, nonce); err != nil {
		return nil, fmt.Errorf("tpmstore: random: %w", err)
	}
	var obj createdObject
	err = s.withReload(func() error {
		var err error
		obj, err = s.createLoaded(credKeyTemplate(nil, nil), nil)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("tpmstore: create credential key: %w", err)
	}
	id, cred, err := s.sealCredential(rpIDHash, nonce, flags, obj)
	if err != nil {
		if ferr := s.flush(obj.handle.Handle); ferr != nil {
			s.log.Warn("flush after failed create", "err", ferr)
		}
		return nil, err
	}
	s.slots.add(credSlot(id), obj.handle)
	return cred, nil
}

func credSlot(id []byte) string { return "cred:" + string(id) }

func (s *Store) sealCredential(rpIDHash [32]byte, nonce []byte, flags byte, obj createdObject) ([]byte, *Credential, error) {
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](obj.public)
	if err != nil {
		return nil, nil, fmt.Errorf("tpmstore: TPM returned a bad public area: %w", err)
	}
	pt, err := pub.Unique.ECC()
	if err != nil {
		return nil, nil, fmt.Errorf("tpmstore: TPM returned a non-ECC key: %w", err)
	}
	x, y := pt.X.Buffer, pt.Y.Buffer
	if len(x) != 32 || len(y) != 32 || !bytes.Equal(tpm2.Marshal(credKeyTemplate(x, y)), obj.public) {
		return nil, nil, errors.New("tpmstore: TPM returned a public area that differs from the credential template")
	}
	if len(obj.private) > 0xffff {
		return nil, nil, errors.New("tpmstore: private blob too large")
	}
	plain := make([]byte, 0, 3+len(obj.private)+64)
	plain = append(plain, flags)
	plain = binary.BigEndian.AppendUint16(plain, uint16(len(obj.private)))
	plain = append(plain, obj.private...)
	plain = append(plain, x...)
	plain = append(plain, y...)
	if credIDOverhead+len(plain) > credIDMaxSize {
		return nil, nil, fmt.Errorf("tpmstore: credential ID would be %d bytes (max %d)", credIDOverhead+len(plain), credIDMaxSize)
	}
	aead, err := s.idAEAD(nonce)
	if err != nil {
		return nil, nil, err
	}
	id := append([]byte{credIDVersion}, nonce...)
	id = aead.Seal(id, make([]byte, aead.NonceSize()), plain, idAD(rpIDHash))
	cred, err := s.openID(rpIDHash, id)
	if err != nil {
		return nil, nil, fmt.Errorf("tpmstore: fresh credential ID does not open: %w", err)
	}
	return id, cred, nil
}

// OpenCredential checks a credential ID for rpIDHash in software (no TPM
// command). Any ID not made by this store for this RP since the last
// Reset gives ErrCredentialInvalid.
func (s *Store) OpenCredential(rpIDHash [32]byte, id []byte) (*Credential, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	c, err := s.openID(rpIDHash, id)
	if err != nil || !c.Options.Resident {
		return c, err
	}
	// A discoverable credential lives only as long as its record: once
	// deleted (credentialManagement, or replaced by a new credential for
	// the same RP and user) its ID must stop working too, as it would on
	// a key that erases the private key. One database read, no TPM command.
	var present bool
	err = s.db.View(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketResidents); b != nil {
			present = b.Get(id) != nil
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("tpmstore: reading resident credentials: %w", err)
	}
	if !present {
		return nil, fmt.Errorf("%w: the resident credential was deleted", ErrCredentialInvalid)
	}
	return c, nil
}

func (s *Store) openID(rpIDHash [32]byte, id []byte) (*Credential, error) {
	if len(id) < credIDOverhead+3+64 || len(id) > credIDMaxSize || id[0] != credIDVersion {
		return nil, ErrCredentialInvalid
	}
	nonce := id[1 : 1+credNonceSize]
	aead, err := s.idAEAD(nonce)
	if err != nil {
		return nil, err
	}
	plain, err := aead.Open(nil, make([]byte, aead.NonceSize()), id[1+credNonceSize:], idAD(rpIDHash))
	if err != nil {
		return nil, ErrCredentialInvalid
	}
	// Authentic from here on, but parse defensively anyway.
	flags := plain[0]
	privLen := int(binary.BigEndian.Uint16(plain[1:3]))
	if flags&^flagsKnown != 0 || flags&flagCredProtectMask == 0 || len(plain) != 3+privLen+64 {
		return nil, fmt.Errorf("%w: malformed plaintext", ErrCredentialInvalid)
	}
	priv := plain[3 : 3+privLen]
	x, y := plain[3+privLen:3+privLen+32], plain[3+privLen+32:]
	key, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrCredentialInvalid, err)
	}
	return &Credential{
		ID:        bytes.Clone(id),
		RPIDHash:  rpIDHash,
		PublicKey: key,
		Options: CredentialOptions{
			CredProtect: flags & flagCredProtectMask,
			HMACSecret:  flags&flagHMACSecret != 0,
			Resident:    flags&flagResident != 0,
		},
		priv: credentialSecret{
			nonce:   bytes.Clone(nonce),
			public:  tpm2.Marshal(credKeyTemplate(x, y)),
			private: bytes.Clone(priv),
		},
	}, nil
}

// Sign signs a 32-byte SHA-256 digest with the credential's TPM key and
// returns an ASN.1 DER ECDSA signature. TPM commands: Sign when the key is
// cached; otherwise Load + Sign (+ FlushContext of the evicted key).
func (s *Store) Sign(c *Credential, digest []byte) ([]byte, error) {
	if c == nil || c.priv.private == nil {
		return nil, errors.New("tpmstore: Sign: credential not opened by this store")
	}
	if len(digest) != sha256.Size {
		return nil, fmt.Errorf("tpmstore: Sign: digest is %d bytes, want 32", len(digest))
	}
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	var rsp *tpm2.SignResponse
	err := s.withReload(func() error {
		h, err := s.loaded(credSlot(c.ID), c.priv.public, c.priv.private)
		if err != nil {
			return err
		}
		rsp, err = tpm2.Sign{
			KeyHandle: authOf(h, nil),
			Digest:    tpm2.TPM2BDigest{Buffer: digest},
			InScheme: tpm2.TPMTSigScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256}),
			},
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
		}.Execute(s.tpm)
		if err != nil {
			return fmt.Errorf("tpmstore: TPM2_Sign: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	sig, err := rsp.Signature.Signature.ECDSA()
	if err != nil {
		return nil, fmt.Errorf("tpmstore: TPM2_Sign: %w", err)
	}
	der, err := asn1.Marshal(struct{ R, S *big.Int }{
		new(big.Int).SetBytes(sig.SignatureR.Buffer),
		new(big.Int).SetBytes(sig.SignatureS.Buffer),
	})
	if err != nil {
		return nil, fmt.Errorf("tpmstore: encode signature: %w", err)
	}
	return der, nil
}

// CredRandom returns the hmac-secret CredRandom of c: TPM2_HMAC with the
// store's TPM-resident HMAC key over the credential's nonce and the UV
// bit, so it cannot be computed from the credential ID alone. TPM
// commands: HMAC (+ Load/FlushContext if the HMAC key was evicted).
func (s *Store) CredRandom(c *Credential, uv bool) ([]byte, error) {
	if c == nil || c.priv.nonce == nil {
		return nil, errors.New("tpmstore: CredRandom: credential not opened by this store")
	}
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	in := []byte{hmacDomainCredRandom}
	in = append(in, c.priv.nonce...)
	if uv {
		in = append(in, 1)
	} else {
		in = append(in, 0)
	}
	return s.tpmHMAC(in)
}

// NextCounter returns the next signature counter value: strictly
// increasing across restarts and crashes. Values are reserved 256 ahead
// on disk (one fsync per 256 calls); after a crash the counter jumps
// forward past the reservation, never back.
func (s *Store) NextCounter() (uint32, error) {
	if err := s.lock(); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	if s.counter == ^uint32(0) {
		return 0, ErrCounterExhausted
	}
	next := s.counter + 1
	if next > s.reserved {
		r := uint64(s.counter) + counterReserve
		if r > uint64(^uint32(0)) {
			r = uint64(^uint32(0))
		}
		reserve := uint32(r)
		err := s.update(func(tx *bolt.Tx) error {
			return tx.Bucket(bucketMeta).Put(keyCounter, be32(reserve))
		})
		if err != nil {
			return 0, err
		}
		s.reserved = reserve
	}
	s.counter = next
	return next, nil
}

// Reset deletes every resident credential and the PIN, and rotates the
// wrapping key so every earlier credential ID is rejected. The signature
// counter keeps increasing.
func (s *Store) Reset() error {
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	salt := make([]byte, 32)
	if _, err := io.ReadFull(s.rand, salt); err != nil {
		return fmt.Errorf("tpmstore: random: %w", err)
	}
	key, err := s.deriveWrapKey(salt)
	if err != nil {
		return err
	}
	err = s.update(func(tx *bolt.Tx) error {
		if err := deleteResidentBuckets(tx, residentBuckets...); err != nil {
			return err
		}
		if err := createResidentBuckets(tx); err != nil {
			return err
		}
		m := tx.Bucket(bucketMeta)
		if err := m.Delete(keyPINPub); err != nil {
			return err
		}
		if err := m.Delete(keyPINPriv); err != nil {
			return err
		}
		return putAll(m, keyWrapSalt, salt, keyPINRetries, []byte{maxPINRetries})
	})
	if err != nil {
		return err
	}
	clear(s.wrapKey)
	s.wrapKey = key
	s.pinPub, s.pinPriv = nil, nil
	s.pinRetries, s.pinFails = maxPINRetries, 0
	// Keys of the old credentials are useless now; free their slots.
	for _, e := range append([]slotEntry(nil), s.slots.entries...) {
		if e.key == slotHMAC {
			continue
		}
		s.slots.remove(e.key)
		if err := s.flush(e.handle.Handle); err != nil {
			s.log.Warn("flush after reset", "err", err)
		}
	}
	s.log.Info("store reset: resident credentials and PIN deleted, wrapping key rotated")
	return nil
}
