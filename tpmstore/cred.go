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
	"github.com/google/go-tpm/tpm2/transport"
	bolt "go.etcd.io/bbolt"
)

// Credential ID layout, at most 255 bytes:
//
//	version(1) ‖ nonce(16) ‖ AES-256-GCM(K_n, zero IV; plaintext; AD = rpIdHash ‖ version)
//	plaintext = flags(1) ‖ len(2) ‖ TPM2B_PRIVATE contents ‖ x(32) ‖ y(32)
//	K_n       = HMAC-SHA256(wrapping key, "tpm-fido credential id" ‖ nonce)
//
// Version 2 IDs are wrapped with the key derived by the TPM anchor key
// (anchor.go), and their hmac-secret CredRandom comes from the anchor
// key too. Version 1 IDs, made before the anchor, are wrapped with the
// old wrapping key, which an upgraded state keeps sealed under the new
// one until the next reset; their CredRandom comes from the old HMAC key.
//
// Each ID has its own key K_n, so the all-zero GCM IV is never reused
// under one key. The public area is not stored: the template is fixed,
// so x and y rebuild it exactly (checked at creation).
const (
	credIDVersion   = 2
	credIDVersionV1 = 1
	credNonceSize   = 16
	credIDMaxSize   = 255
	credIDOverhead  = 1 + credNonceSize + 16 // version, nonce, GCM tag
)

// Flag bits in the plaintext.
const (
	flagCredProtectMask = 0x03
	flagHMACSecret      = 0x04
	flagResident        = 0x08
	flagPINBound        = 0x10 // the key's TPM policy needs the PIN (credProtect 3)
	flagsKnown          = flagCredProtectMask | flagHMACSecret | flagResident | flagPINBound
)

// idAEAD returns the AEAD of the ID with this version and nonce; nil
// when this store has no key for the version.
func (s *Store) idAEAD(version byte, nonce []byte) (cipher.AEAD, error) {
	key := s.wrapKey
	if version == credIDVersionV1 {
		key = s.wrapKeyV1
	}
	if key == nil {
		return nil, nil
	}
	m := hmac.New(sha256.New, key)
	m.Write([]byte("tpm-fido credential id"))
	m.Write(nonce)
	block, err := aes.NewCipher(m.Sum(nil))
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

func idAD(rpIDHash [32]byte, version byte) []byte {
	return append(rpIDHash[:], version)
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
//
// A credProtect-3 (userVerificationRequired) credential is PIN-bound:
// its key gets a TPM policy that needs the PIN (pinPolicyDigest), so it
// signs only through SignWithPIN, also for whoever holds the state
// directory and the TPM. It needs a PIN to bind to: ErrPINNotSet
// without one.
func (s *Store) CreateCredential(rpIDHash [32]byte, opts CredentialOptions) (*Credential, error) {
	flags, err := encodeFlags(opts)
	if err != nil {
		return nil, err
	}
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	var policy []byte
	if opts.CredProtect == CredProtectUVRequired {
		if s.pinPub == nil {
			return nil, fmt.Errorf("%w: a credProtect 3 (verify-required) credential is bound to the PIN", ErrPINNotSet)
		}
		if policy, err = pinPolicyDigest(s.pinPub); err != nil {
			return nil, err
		}
		flags |= flagPINBound
	}
	nonce := make([]byte, credNonceSize)
	if _, err := io.ReadFull(s.rand, nonce); err != nil {
		return nil, fmt.Errorf("tpmstore: random: %w", err)
	}
	var obj createdObject
	err = s.withReload(func() error {
		var err error
		obj, err = s.createLoaded(credKeyTemplate(nil, nil, policy), nil)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("tpmstore: create credential key: %w", err)
	}
	id, cred, err := s.sealCredential(rpIDHash, nonce, flags, policy, obj)
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

func (s *Store) sealCredential(rpIDHash [32]byte, nonce []byte, flags byte, policy []byte, obj createdObject) ([]byte, *Credential, error) {
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](obj.public)
	if err != nil {
		return nil, nil, fmt.Errorf("tpmstore: TPM returned a bad public area: %w", err)
	}
	pt, err := pub.Unique.ECC()
	if err != nil {
		return nil, nil, fmt.Errorf("tpmstore: TPM returned a non-ECC key: %w", err)
	}
	x, y := pt.X.Buffer, pt.Y.Buffer
	if len(x) != 32 || len(y) != 32 || !bytes.Equal(tpm2.Marshal(credKeyTemplate(x, y, policy)), obj.public) {
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
	aead, err := s.idAEAD(credIDVersion, nonce)
	if err != nil {
		return nil, nil, err
	}
	if aead == nil {
		return nil, nil, errors.New("tpmstore: no wrapping key")
	}
	id := append([]byte{credIDVersion}, nonce...)
	id = aead.Seal(id, make([]byte, aead.NonceSize()), plain, idAD(rpIDHash, credIDVersion))
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
	err = s.view(func(tx *bolt.Tx) error {
		if b := tx.Bucket(bucketResID); b != nil {
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
	if len(id) < credIDOverhead+3+64 || len(id) > credIDMaxSize || (id[0] != credIDVersion && id[0] != credIDVersionV1) {
		return nil, ErrCredentialInvalid
	}
	version := id[0]
	nonce := id[1 : 1+credNonceSize]
	aead, err := s.idAEAD(version, nonce)
	if err != nil {
		return nil, err
	}
	if aead == nil {
		return nil, ErrCredentialInvalid
	}
	plain, err := aead.Open(nil, make([]byte, aead.NonceSize()), id[1+credNonceSize:], idAD(rpIDHash, version))
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
	var policy []byte
	if flags&flagPINBound != 0 {
		// Bound to this store's PIN object (kept across PIN changes;
		// only a reset, which kills the ID too, removes it).
		if policy, err = pinPolicyDigest(s.pinPub); err != nil || policy == nil {
			return nil, fmt.Errorf("%w: PIN-bound credential without a PIN", ErrCredentialInvalid)
		}
	}
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
		PINBound: flags&flagPINBound != 0,
		priv: credentialSecret{
			version: version,
			nonce:   bytes.Clone(nonce),
			public:  tpm2.Marshal(credKeyTemplate(x, y, policy)),
			private: bytes.Clone(priv),
		},
	}, nil
}

// Sign signs a 32-byte SHA-256 digest with the credential's TPM key and
// returns an ASN.1 DER ECDSA signature. TPM commands: Sign when the key is
// cached; otherwise Load + Sign (+ FlushContext of the evicted key). A
// PIN-bound credential gives ErrPINRequired.
func (s *Store) Sign(c *Credential, digest []byte) ([]byte, error) {
	if err := checkSign(c, digest); err != nil {
		return nil, err
	}
	if c.PINBound {
		return nil, ErrPINRequired
	}
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	return s.sign(c, digest, nil)
}

// SignWithPIN is Sign for a user-verified request: pinHash is the PIN
// hash the TPM verified when the pinUvAuthToken was issued. A PIN-bound
// credential's key is used in a policy session satisfied with
// TPM2_PolicySecret on the PIN object (which the TPM checks against its
// authValue, under its dictionary-attack protection); any other
// credential signs as with Sign. TPM commands for a PIN-bound key:
// StartAuthSession, Load (PIN object, into the slot kept free),
// PolicySecret, FlushContext, Sign (the session ends with it), plus the
// credential key's Load when it is not cached.
func (s *Store) SignWithPIN(c *Credential, digest []byte, pinHash [16]byte) ([]byte, error) {
	if err := checkSign(c, digest); err != nil {
		return nil, err
	}
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	if !c.PINBound {
		return s.sign(c, digest, nil)
	}
	if s.pinPub == nil {
		return nil, ErrPINNotSet
	}
	return s.sign(c, digest, &pinHash)
}

func checkSign(c *Credential, digest []byte) error {
	if c == nil || c.priv.private == nil {
		return errors.New("tpmstore: Sign: credential not opened by this store")
	}
	if len(digest) != sha256.Size {
		return fmt.Errorf("tpmstore: Sign: digest is %d bytes, want 32", len(digest))
	}
	return nil
}

func (s *Store) sign(c *Credential, digest []byte, pinHash *[16]byte) ([]byte, error) {
	var rsp *tpm2.SignResponse
	err := s.withReload(func() error {
		h, err := s.loaded(credSlot(c.ID), c.priv.public, c.priv.private)
		if err != nil {
			return err
		}
		auth := tpm2.PasswordAuth(nil)
		if pinHash != nil {
			// A one-off policy session: started and satisfied just before
			// TPM2_Sign, ended by it.
			auth = tpm2.Policy(tpm2.TPMAlgSHA256, 16, func(tpm transport.TPM, sess tpm2.TPMISHPolicy, nonce tpm2.TPM2BNonce) error {
				return s.pinPolicySecret(tpm, sess, nonce, *pinHash)
			})
		}
		rsp, err = tpm2.Sign{
			KeyHandle: tpm2.AuthHandle{Handle: h.Handle, Name: h.Name, Auth: auth},
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

// pinPolicySecret satisfies the PIN policy in session sess: the PIN
// object is loaded into the transient slot the cache keeps free,
// TPM2_PolicySecret is authorised with pinHash, and the object is
// flushed again.
func (s *Store) pinPolicySecret(tpm transport.TPM, sess tpm2.TPMISHPolicy, nonce tpm2.TPM2BNonce, pinHash [16]byte) error {
	var l *tpm2.LoadResponse
	err := s.retryObjectMemory(func() error {
		var err error
		l, err = tpm2.Load{
			ParentHandle: s.srkAuth(),
			InPrivate:    tpm2.TPM2BPrivate{Buffer: s.pinPriv},
			InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](s.pinPub),
		}.Execute(tpm)
		return err
	})
	if err != nil {
		return fmt.Errorf("load the PIN object: %w", err)
	}
	defer func() {
		if _, err := (tpm2.FlushContext{FlushHandle: l.ObjectHandle}).Execute(tpm); err != nil {
			s.log.Warn("flush the PIN object", "err", err)
		}
	}()
	_, err = tpm2.PolicySecret{
		AuthHandle:    tpm2.AuthHandle{Handle: l.ObjectHandle, Name: l.Name, Auth: tpm2.PasswordAuth(pinHash[:])},
		PolicySession: sess,
		NonceTPM:      nonce,
	}.Execute(tpm)
	if err != nil {
		// go-tpm does not end a session whose policy callback failed.
		if _, ferr := (tpm2.FlushContext{FlushHandle: sess}).Execute(tpm); ferr != nil {
			s.log.Warn("flush the policy session", "err", ferr)
		}
		return fmt.Errorf("TPM2_PolicySecret with the PIN object: %w", err)
	}
	return nil
}

// CredRandom returns the hmac-secret CredRandom of c: TPM2_HMAC with the
// anchor key (version-1 credentials: the old HMAC key) over the
// credential's nonce and the UV bit, so it cannot be computed from the
// credential ID alone. TPM commands: HMAC (version 1: + Load the first
// time).
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
	if c.priv.version == credIDVersionV1 {
		return s.tpmHMAC(in)
	}
	return s.anchorHMAC(s.anchor, in)
}

// NextCounter returns the next signature counter value: strictly
// increasing across restarts, crashes and restored copies of the state.
// Values come in blocks of 256 anchored in the TPM's counter index: the
// first value of a block costs one TPM2_NV_Increment, the others
// nothing. After a restart the counter continues above the block the
// index last reached, never back.
func (s *Store) NextCounter() (uint32, error) {
	if err := s.lock(); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	if s.counter == ^uint32(0) {
		return 0, ErrCounterExhausted
	}
	next := s.counter + 1
	if next > s.reserved() {
		if err := s.nvIncrement(s.counterIdx); err != nil {
			return 0, err
		}
		s.ctrBlock++
		if next > s.reserved() {
			return 0, ErrCounterExhausted
		}
	}
	s.counter = next
	return next, nil
}

// Reset deletes every resident credential and the PIN, and replaces the
// TPM anchor key (new key and authValue, at the same persistent handle
// when the old key is still there or the handle is free), so every
// earlier credential ID is rejected for good, also by a copy of state.db
// taken before. The signature counter keeps increasing.
//
// The old key is removed first, then the new state is committed, then
// the new key is made persistent: if the process dies in between, the
// next Open says the state is stale and RecoverStale (tpm-fido reset)
// finishes the job, with no key left behind.
func (s *Store) Reset() error {
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	return s.reset()
}

// RecoverStale resets the key store in cfg.Dir also when Open refuses it
// with ErrStaleState (a copy of state.db older than the last reset was
// put back, or the TPM anchor was removed): the same as Reset, keeping
// the counter index when it is still there. Nothing of the stale
// state's credentials survives. The object at the stale state's anchor
// handle is removed only if it is the key that state recorded (its
// name); anything else there — another program's object, another user's
// key store's anchor, or this store's own later anchor key, which a
// copy of the state made before it cannot tell from another store's —
// is left alone, and the new anchor key goes to a new handle.
func RecoverStale(cfg Config) error {
	s, err := open(cfg, true)
	if err != nil {
		return err
	}
	defer s.Close()
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.reset()
}

// anchorTarget decides where reset puts the new anchor key: at the
// store's handle when it is free or holds the store's recorded anchor
// key (then evictOld), else at a new free handle.
// oldName is the name of the old key to evict.
func (s *Store) anchorTarget() (h tpm2.TPMHandle, evictOld bool, oldName []byte, err error) {
	present, ours, name, err := s.provenAnchor(s.anchor, anchorMark(s.counterIdx.auth))
	switch {
	case err != nil:
		return 0, false, nil, err
	case !present:
		return s.anchor.handle, false, nil, nil
	case ours:
		return s.anchor.handle, true, name, nil
	}
	h, err = s.freeHandle(anchorHandleFirst, anchorHandleLast)
	if err != nil {
		return 0, false, nil, err
	}
	old := fmt.Sprintf("0x%08x", uint32(s.anchor.handle))
	s.log.Warn("reset: the persistent object at the store's anchor handle is not this key store's, so it is left alone and the new anchor key goes to a new handle. "+
		"It is another program's or another user's key store's (or, if an older copy of a state made before tpm-fido marked its anchor keys was put back, this store's own later anchor key: only then remove it, tpm2_evictcontrol -C o -c "+old+")",
		"handle", old, "new_handle", fmt.Sprintf("0x%08x", uint32(h)))
	return h, false, nil, nil
}

func (s *Store) reset() error {
	salt := make([]byte, 32)
	if _, err := io.ReadFull(s.rand, salt); err != nil {
		return fmt.Errorf("tpmstore: random: %w", err)
	}
	auth, err := s.randomAuth()
	if err != nil {
		return err
	}
	// Keys of the old credentials (and a version-1 HMAC key) are useless
	// now; free their slots, which also makes room for the new key.
	for _, e := range s.slots.entries {
		if err := s.flush(e.handle.Handle); err != nil {
			s.log.Warn("flush after reset", "err", err)
		}
	}
	s.slots.entries = nil
	counterIdx, base, n0, block := s.counterIdx, s.ctrBase, s.ctrN0, s.ctrBlock
	newCounter := false
	if s.stale {
		n, err := s.nvRead(counterIdx)
		switch {
		case err == nil && n >= n0:
			block = n
		case err == nil || isGone(err):
			// The counter index is gone: a new one. Every credential is
			// new after a reset, so no earlier value matters.
			h, err := s.freeHandle(counterIndexFirst, counterIndexLast)
			if err != nil {
				return err
			}
			cauth, err := s.randomAuth()
			if err != nil {
				return err
			}
			if counterIdx, n0, err = s.newCounterIndex(h, cauth); err != nil {
				return err
			}
			base, block, newCounter = 0, n0, true
		default:
			return err
		}
	}
	fail := func(err error) error {
		if newCounter {
			s.removeTPMObjects([]tpmObject{counterIdx})
		}
		return err
	}
	target, evictOld, oldName, err := s.anchorTarget()
	if err != nil {
		return fail(err)
	}
	anchor, t, err := s.newAnchorKey(auth, anchorMark(counterIdx.auth))
	if err != nil {
		return fail(err)
	}
	// Until it is persistent, the new key is a transient object outside
	// the slot cache: making room for the old anchor key (a persistent
	// object the TPM loads into a free slot) must not flush it.
	s.held = t.Handle
	defer func() { s.held = 0 }()
	anchor.handle = target
	key, err := s.anchorHMAC(tpmObject{handle: t.Handle, name: t.Name.Buffer, auth: anchor.auth}, wrapKeyInput(salt))
	if err != nil {
		s.flushQuiet(t.Handle)
		return fail(err)
	}
	// The old key goes first: from here on the state's credentials are
	// dead whatever happens next, and a process that dies before the new
	// key is in place leaves a stale state (RecoverStale), not a key.
	if evictOld {
		if err := s.evictAt(s.anchor.handle, oldName); err != nil {
			s.flushQuiet(t.Handle)
			return fail(fmt.Errorf("tpmstore: reset: the old TPM anchor key could not be removed; nothing was deleted: %w", err))
		}
	}
	err = s.update(func(tx *bolt.Tx) error {
		if err := deleteResidentBuckets(tx, residentBuckets...); err != nil {
			return err
		}
		if err := createResidentBuckets(tx); err != nil {
			return err
		}
		m := tx.Bucket(bucketMeta)
		for _, k := range [][]byte{keyPINPub, keyPINPriv, keyHMACPub, keyHMACPriv, keyWrapV1} {
			if err := m.Delete(k); err != nil {
				return err
			}
		}
		if err := putAll(m, anchorMeta(anchor, counterIdx, base, n0, wrapCheck(key))...); err != nil {
			return err
		}
		return putAll(m, keyWrapSalt, salt, keyPINRetries, []byte{maxPINRetries})
	})
	if err != nil {
		s.flushQuiet(t.Handle)
		err = fail(err)
		if evictOld {
			s.stale = true // the state names a key that is gone
			return fmt.Errorf("tpmstore: reset: the old TPM anchor key is removed, so no earlier credential can be used any more, but the state could not be written; run the reset again: %w", err)
		}
		return err
	}
	// The state names the new key from here on; put it in the TPM.
	if err := s.persistAnchor(t, anchor.handle); err != nil {
		s.stale = true
		return fmt.Errorf("tpmstore: reset: the credentials are deleted but the new TPM anchor key could not be stored; run the reset again: %w", err)
	}
	clear(s.wrapKey)
	clear(s.wrapKeyV1)
	s.anchor, s.wrapKey, s.wrapKeyV1 = anchor, key, nil
	s.hmacPub, s.hmacPriv = nil, nil
	s.counterIdx, s.ctrBase, s.ctrN0, s.ctrBlock = counterIdx, base, n0, block
	if s.stale || newCounter {
		s.counter = s.reserved()
	}
	s.stale = false
	s.pinPub, s.pinPriv = nil, nil
	s.pinRetries, s.pinFails = maxPINRetries, 0
	s.log.Info("store reset: resident credentials and PIN deleted, TPM anchor key replaced",
		"anchor_key", fmt.Sprintf("0x%08x", uint32(anchor.handle)))
	return nil
}

func (s *Store) flushQuiet(h tpm2.TPMHandle) {
	if err := s.flush(h); err != nil {
		s.log.Warn("flush", "err", err)
	}
}
