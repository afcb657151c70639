package tpmstore

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"

	"github.com/google/go-tpm/tpm2"
)

// Slot names of the non-credential objects in the slot cache.
const (
	slotHMAC = "hmac"
	slotPIN  = "pin"
)

// slotCache is a small LRU of loaded transient objects (the storage
// primary is kept outside it, always loaded). Index 0 is the most recent.
type slotCache struct {
	capacity int
	entries  []slotEntry
}

type slotEntry struct {
	key    string
	handle tpm2.NamedHandle
}

func (c *slotCache) get(key string) (tpm2.NamedHandle, bool) {
	for i, e := range c.entries {
		if e.key == key {
			copy(c.entries[1:i+1], c.entries[:i])
			c.entries[0] = e
			return e.handle, true
		}
	}
	return tpm2.NamedHandle{}, false
}

func (c *slotCache) add(key string, h tpm2.NamedHandle) {
	c.entries = append([]slotEntry{{key, h}}, c.entries...)
}

// remove drops key and returns its handle.
func (c *slotCache) remove(key string) (tpm2.NamedHandle, bool) {
	for i, e := range c.entries {
		if e.key == key {
			c.entries = append(c.entries[:i], c.entries[i+1:]...)
			return e.handle, true
		}
	}
	return tpm2.NamedHandle{}, false
}

// victim removes and returns the least recently used entry, the HMAC
// key of a version-1 state last (it makes hmac-secret of version-1
// credentials cost one command while it stays).
func (c *slotCache) victim() (slotEntry, bool) {
	for _, skipHMAC := range []bool{true, false} {
		for i := len(c.entries) - 1; i >= 0; i-- {
			if e := c.entries[i]; !skipHMAC || e.key != slotHMAC {
				c.entries = append(c.entries[:i], c.entries[i+1:]...)
				return e, true
			}
		}
	}
	return slotEntry{}, false
}

func (s *Store) srkAuth() tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: s.srk.Handle, Name: s.srk.Name, Auth: tpm2.PasswordAuth(nil)}
}

func authOf(h tpm2.NamedHandle, auth []byte) tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: h.Handle, Name: h.Name, Auth: tpm2.PasswordAuth(auth)}
}

// createSRK creates the storage primary (ECC P-256 SRK template, owner
// hierarchy) and returns its public area.
func (s *Store) createSRK() ([]byte, error) {
	var rsp *tpm2.CreatePrimaryResponse
	err := s.retryObjectMemory(func() error {
		var err error
		rsp, err = tpm2.CreatePrimary{
			PrimaryHandle: tpm2.TPMRHOwner,
			InPublic:      tpm2.New2B(tpm2.ECCSRKTemplate),
		}.Execute(s.tpm)
		return err
	})
	if errors.Is(err, tpm2.TPMRCBadAuth) || errors.Is(err, tpm2.TPMRCAuthFail) {
		return nil, fmt.Errorf("%w (create storage primary key: %w)", ErrOwnerAuth, err)
	}
	if err != nil {
		return nil, fmt.Errorf("tpmstore: create storage primary key (does the TPM support ECC P-256?): %w", err)
	}
	s.srk = tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}
	return rsp.OutPublic.Bytes(), nil
}

// makeRoom flushes the least recently used object when the cache is full.
func (s *Store) makeRoom() error {
	for len(s.slots.entries) >= s.slots.capacity {
		e, ok := s.slots.victim()
		if !ok {
			return errors.New("tpmstore: no TPM object slot can be freed")
		}
		if err := s.flush(e.handle.Handle); err != nil {
			return err
		}
	}
	return nil
}

func (s *Store) flush(h tpm2.TPMHandle) error {
	if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(s.tpm); err != nil {
		return fmt.Errorf("tpmstore: flush handle 0x%x: %w", uint32(h), err)
	}
	return nil
}

// flushAll flushes every object this store has loaded (best effort).
func (s *Store) flushAll() {
	for _, e := range s.slots.entries {
		if err := s.flush(e.handle.Handle); err != nil {
			s.log.Debug("flush on close", "err", err)
		}
	}
	s.slots.entries = nil
	if s.srk.Handle != 0 {
		if err := s.flush(s.srk.Handle); err != nil {
			s.log.Debug("flush on close", "err", err)
		}
		s.srk = tpm2.NamedHandle{}
	}
}

// loaded returns the handle of the object cached under key, loading it
// from its blobs (after making room) if needed.
func (s *Store) loaded(key string, public, private []byte) (tpm2.NamedHandle, error) {
	if h, ok := s.slots.get(key); ok {
		return h, nil
	}
	if err := s.makeRoom(); err != nil {
		return tpm2.NamedHandle{}, err
	}
	var rsp *tpm2.LoadResponse
	err := s.retryObjectMemory(func() error {
		var err error
		rsp, err = tpm2.Load{
			ParentHandle: s.srkAuth(),
			InPrivate:    tpm2.TPM2BPrivate{Buffer: private},
			InPublic:     tpm2.BytesAs2B[tpm2.TPMTPublic](public),
		}.Execute(s.tpm)
		return err
	})
	if err != nil {
		return tpm2.NamedHandle{}, fmt.Errorf("tpmstore: load %s: %w", key, err)
	}
	h := tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name}
	s.slots.add(key, h)
	return h, nil
}

type createdObject struct {
	handle          tpm2.NamedHandle
	public, private []byte
}

// createLoaded creates an object under the SRK and leaves it loaded (one
// TPM command). The caller adds it to the slot cache.
func (s *Store) createLoaded(tmpl tpm2.TPMTPublic, sensitive *tpm2.TPMSSensitiveCreate) (createdObject, error) {
	if err := s.makeRoom(); err != nil {
		return createdObject{}, err
	}
	cmd := tpm2.CreateLoaded{
		ParentHandle: s.srkAuth(),
		InPublic:     tpm2.New2BTemplate(&tmpl),
	}
	if sensitive != nil {
		cmd.InSensitive = tpm2.TPM2BSensitiveCreate{Sensitive: sensitive}
	}
	var rsp *tpm2.CreateLoadedResponse
	err := s.retryObjectMemory(func() error {
		var err error
		rsp, err = cmd.Execute(s.tpm)
		return err
	})
	if err != nil {
		return createdObject{}, err
	}
	return createdObject{
		handle:  tpm2.NamedHandle{Handle: rsp.ObjectHandle, Name: rsp.Name},
		public:  rsp.OutPublic.Bytes(),
		private: rsp.OutPrivate.Buffer,
	}, nil
}

// retryObjectMemory runs fn; if the TPM has no free object slot, which
// happens on a TPM without a resource manager (swtpm, simulator) when an
// earlier process died with objects loaded, it flushes the transient
// objects this store does not own and runs fn once more.
func (s *Store) retryObjectMemory(fn func() error) error {
	err := fn()
	if !errors.Is(err, tpm2.TPMRCObjectMemory) {
		return err
	}
	if ferr := s.flushForeign(); ferr != nil {
		return errors.Join(err, ferr)
	}
	return fn()
}

func (s *Store) flushForeign() error {
	rsp, err := tpm2.GetCapability{
		Capability:    tpm2.TPMCapHandles,
		Property:      uint32(tpm2.TPMHTTransient) << 24,
		PropertyCount: 64,
	}.Execute(s.tpm)
	if err != nil {
		return fmt.Errorf("tpmstore: list transient handles: %w", err)
	}
	hs, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		return fmt.Errorf("tpmstore: list transient handles: %w", err)
	}
	ours := map[tpm2.TPMHandle]bool{s.srk.Handle: true}
	if s.held != 0 {
		ours[s.held] = true
	}
	for _, e := range s.slots.entries {
		ours[e.handle.Handle] = true
	}
	for _, h := range hs.Handle {
		if ours[h] {
			continue
		}
		s.log.Warn("TPM object memory full: flushing a transient object left by another process", "handle", fmt.Sprintf("0x%x", uint32(h)))
		if err := s.flush(h); err != nil {
			return err
		}
	}
	return nil
}

// hmacKeyTemplate is the keyed-hash HMAC-SHA256 key behind the wrapping
// key and hmac-secret.
func hmacKeyTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        true,
			NoDA:                true,
			SignEncrypt:         true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{
				Scheme:  tpm2.TPMAlgHMAC,
				Details: tpm2.NewTPMUSchemeKeyedHash(tpm2.TPMAlgHMAC, &tpm2.TPMSSchemeHMAC{HashAlg: tpm2.TPMAlgSHA256}),
			},
		}),
	}
}

// credKeyTemplate is the credential signing key; x and y are empty for
// creation and the key's point when rebuilding its public area. With a
// policy (credProtect 3, pinPolicyDigest) the key has no userWithAuth:
// the TPM signs with it only in a policy session that satisfied the
// policy, i.e. only with the PIN.
func credKeyTemplate(x, y, policy []byte) tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgECC,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:            true,
			FixedParent:         true,
			SensitiveDataOrigin: true,
			UserWithAuth:        policy == nil,
			NoDA:                true,
			SignEncrypt:         true,
		},
		AuthPolicy: tpm2.TPM2BDigest{Buffer: policy},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgECC, &tpm2.TPMSECCParms{
			Symmetric: tpm2.TPMTSymDefObject{Algorithm: tpm2.TPMAlgNull},
			Scheme: tpm2.TPMTECCScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUAsymScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSigSchemeECDSA{HashAlg: tpm2.TPMAlgSHA256}),
			},
			CurveID: tpm2.TPMECCNistP256,
			KDF:     tpm2.TPMTKDFScheme{Scheme: tpm2.TPMAlgNull},
		}),
		Unique: tpm2.NewTPMUPublicID(tpm2.TPMAlgECC, &tpm2.TPMSECCPoint{
			X: tpm2.TPM2BECCParameter{Buffer: x},
			Y: tpm2.TPM2BECCParameter{Buffer: y},
		}),
	}
}

// pinPolicyDigest is the authPolicy of PIN-bound credential keys:
// TPM2_PolicySecret with the PIN object (TPM 2.0 Part 3 §23.4), whose
// authValue is the PIN hash. It depends on the PIN object's name only,
// which TPM2_ObjectChangeAuth keeps, so a PIN change leaves every
// credential usable with the new PIN. Nil when no PIN is set.
func pinPolicyDigest(pinPub []byte) ([]byte, error) {
	if pinPub == nil {
		return nil, nil
	}
	pub, err := tpm2.Unmarshal[tpm2.TPMTPublic](pinPub)
	if err != nil {
		return nil, fmt.Errorf("tpmstore: PIN object public area: %w", err)
	}
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		return nil, err
	}
	calc, err := tpm2.NewPolicyCalculator(tpm2.TPMAlgSHA256)
	if err != nil {
		return nil, err
	}
	if err := (tpm2.PolicySecret{AuthHandle: tpm2.NamedHandle{Name: *name}}).Update(calc); err != nil {
		return nil, err
	}
	return calc.Hash().Digest, nil
}

// pinObjectTemplate is the sealed object whose authValue is the PIN hash.
// It deliberately lacks noDA: wrong PINs count against the TPM's
// dictionary-attack protection.
func pinObjectTemplate() tpm2.TPMTPublic {
	return tpm2.TPMTPublic{
		Type:    tpm2.TPMAlgKeyedHash,
		NameAlg: tpm2.TPMAlgSHA256,
		ObjectAttributes: tpm2.TPMAObject{
			FixedTPM:     true,
			FixedParent:  true,
			UserWithAuth: true,
		},
		Parameters: tpm2.NewTPMUPublicParms(tpm2.TPMAlgKeyedHash, &tpm2.TPMSKeyedHashParms{
			Scheme: tpm2.TPMTKeyedHashScheme{Scheme: tpm2.TPMAlgNull},
		}),
	}
}

// tpmHMAC computes HMAC-SHA256 with the HMAC key of a state made before
// the TPM anchor (loaded when needed).
func (s *Store) tpmHMAC(data []byte) ([]byte, error) {
	if s.hmacPub == nil {
		return nil, errors.New("tpmstore: this state has no version-1 HMAC key")
	}
	var rsp *tpm2.HmacResponse
	err := s.withReload(func() error {
		h, err := s.loaded(slotHMAC, s.hmacPub, s.hmacPriv)
		if err != nil {
			return err
		}
		rsp, err = tpm2.Hmac{
			Handle:  authOf(h, nil),
			Buffer:  tpm2.TPM2BMaxBuffer{Buffer: data},
			HashAlg: tpm2.TPMAlgSHA256,
		}.Execute(s.tpm)
		if err != nil {
			return fmt.Errorf("tpmstore: TPM2_HMAC: %w", err)
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if len(rsp.OutHMAC.Buffer) != 32 {
		return nil, fmt.Errorf("tpmstore: TPM2_HMAC returned %d bytes", len(rsp.OutHMAC.Buffer))
	}
	return rsp.OutHMAC.Buffer, nil
}

// HMAC inputs are domain-separated by their first byte.
const (
	hmacDomainWrap       = 0x00
	hmacDomainCredRandom = 0x01
)

// wrapKeyInput is what the TPM HMACs to derive the credential-ID
// wrapping key from the salt in the state: only the TPM key can
// recompute it.
func wrapKeyInput(salt []byte) []byte {
	in := append([]byte{hmacDomainWrap}, "tpm-fido credential-id wrapping key"...)
	return append(in, salt...)
}

// wrapCheckSize is the length of the wrapping-key check value.
const wrapCheckSize = 16

// wrapCheck is recorded with the state so that Open knows the anchor key
// derived the right wrapping key (a key that merely answers is not
// enough: it could be another one at the same handle).
func wrapCheck(wrapKey []byte) []byte {
	m := hmac.New(sha256.New, wrapKey)
	m.Write([]byte("tpm-fido wrapping key check"))
	return m.Sum(nil)[:wrapCheckSize]
}

// sealWrapV1 seals the wrapping key of version-1 credential IDs under
// the current wrapping key (AES-256-GCM, random nonce), so it is only
// available while the anchor key is.
func sealWrapV1(rnd io.Reader, wrapKey, keyV1 []byte) ([]byte, error) {
	aead, err := wrapV1AEAD(wrapKey)
	if err != nil {
		return nil, err
	}
	nonce := make([]byte, aead.NonceSize())
	if _, err := io.ReadFull(rnd, nonce); err != nil {
		return nil, fmt.Errorf("tpmstore: random: %w", err)
	}
	return aead.Seal(nonce, nonce, keyV1, []byte("tpm-fido v1 wrapping key")), nil
}

func openWrapV1(wrapKey, sealed []byte) ([]byte, error) {
	aead, err := wrapV1AEAD(wrapKey)
	if err != nil {
		return nil, err
	}
	if len(sealed) < aead.NonceSize() {
		return nil, fmt.Errorf("%w: meta %q malformed", ErrCorruptState, keyWrapV1)
	}
	k, err := aead.Open(nil, sealed[:aead.NonceSize()], sealed[aead.NonceSize():], []byte("tpm-fido v1 wrapping key"))
	if err != nil || len(k) != 32 {
		return nil, fmt.Errorf("%w: meta %q does not open", ErrCorruptState, keyWrapV1)
	}
	return k, nil
}

func wrapV1AEAD(wrapKey []byte) (cipher.AEAD, error) {
	m := hmac.New(sha256.New, wrapKey)
	m.Write([]byte("tpm-fido v1 wrapping key seal"))
	block, err := aes.NewCipher(m.Sum(nil))
	if err != nil {
		return nil, err
	}
	return cipher.NewGCM(block)
}

// isStaleHandle reports whether err says that a handle the store holds
// no longer names a loaded object.
func isStaleHandle(err error) bool {
	return errors.Is(err, tpm2.TPMRCHandle) || errors.Is(err, tpm2.TPMRCReferenceH0) ||
		errors.Is(err, tpm2.TPMRCReferenceH1)
}

// withReload runs fn; if the TPM has lost the store's objects (the TPM
// was restarted, e.g. resume from hibernation, or someone flushed them)
// it re-creates the storage primary, reloads the HMAC key and runs fn
// once more. fn must look its handles up afresh.
func (s *Store) withReload(fn func() error) error {
	err := fn()
	if err == nil || !isStaleHandle(err) {
		return err
	}
	s.log.Warn("the TPM lost the store's objects; re-creating them", "err", err)
	if rerr := s.reload(); rerr != nil {
		return fmt.Errorf("%w (while recovering from: %w)", rerr, err)
	}
	return fn()
}

// reload forgets every cached handle and rebuilds the SRK
// (CreatePrimary); the objects are loaded again when next needed. The
// handles are not flushed: after a TPM restart their numbers may belong
// to someone else. (Persistent objects survive a TPM restart.)
func (s *Store) reload() error {
	s.slots.entries = nil
	s.srk = tpm2.NamedHandle{}
	pub, err := s.createSRK()
	if err != nil {
		return err
	}
	if fp := sha256.Sum256(pub); !bytes.Equal(fp[:], s.srkFP) {
		return fmt.Errorf("%w: the storage key changed while running (TPM cleared?)", ErrForeignTPM)
	}
	return nil
}
