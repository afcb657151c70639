package tpmstore

import (
	"bytes"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/big"

	"github.com/google/go-tpm/tpm2"
)

// A state directory alone cannot be trusted to move forward: a copy of
// state.db taken earlier can be put back. Two things therefore live in
// the TPM itself, allocated once per store and recorded in the state:
//
//   - the anchor key: a keyed-hash HMAC key made persistent with
//     TPM2_EvictControl, whose blob is never written anywhere. The
//     credential-ID wrapping key and hmac-secret's CredRandom are HMACs
//     with it. Reset replaces it (new key, new random authValue, at the
//     same handle unless another object took it), so a state.db from
//     before a reset can no longer derive its wrapping key: its
//     credential IDs are dead for good.
//   - the counter index: a TPM_NT_COUNTER NV index. The signature counter
//     is handed out in blocks of counterReserve values, one
//     TPM2_NV_Increment per block, and the next block always starts above
//     every value the index has ever covered, so restoring an old
//     state.db cannot send the counter back.
//
// Both have a random 32-byte authValue kept in state.db (0600), so
// another local user with access to the TPM cannot use them, and noDA,
// so a wrong guess never counts against the TPM's dictionary-attack
// protection. Creating them needs the owner hierarchy's authorisation,
// which must be empty, as for the storage primary key.
//
// The store removes such an object only when it proves to be its own
// (provenAnchor, undefineCounter): another user's store on the same TPM
// has objects of the very same templates.

// Handle ranges (TCG "Registry of Reserved TPM 2.0 Handles and
// Localities": owner persistent objects 0x81000000-0x817FFFFF with
// 0x8100xxxx and 0x8101xxxx kept for SRKs and EKs; owner NV indices
// 0x01800000-0x01BFFFFF). tpm-fido picks a free handle at random in the
// top 64 Ki of each range, so daemons of several users and other
// software that uses fixed handles do not collide, and records it.
const (
	anchorHandleFirst tpm2.TPMHandle = 0x817F0000
	anchorHandleLast  tpm2.TPMHandle = 0x817FFFFF
	counterIndexFirst tpm2.TPMHandle = 0x01BF0000
	counterIndexLast  tpm2.TPMHandle = 0x01BFFFFF
)

var (
	// ErrStaleState: the TPM anchor this state depends on is gone or has
	// changed. The key store was reset after this copy of state.db was
	// made (or another program removed the TPM objects); its credentials
	// can no longer be used. Reset (tpm-fido reset) starts afresh.
	ErrStaleState = errors.New("tpmstore: state is older than the TPM's record of this key store")
	// ErrOwnerAuth: the TPM's owner hierarchy has a password, so tpm-fido
	// cannot create its keys and TPM objects.
	ErrOwnerAuth = errors.New("tpmstore: the TPM's owner hierarchy has a password (ownerAuth); tpm-fido needs it empty: tpm2_changeauth -c owner -p OLD_PASSWORD")
)

// tpmObject is a persistent object or NV index the store owns.
type tpmObject struct {
	handle tpm2.TPMHandle
	name   []byte
	auth   []byte // 32 random bytes
}

func (o tpmObject) authHandle() tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: o.handle, Name: tpm2.TPM2BName{Buffer: o.name}, Auth: tpm2.PasswordAuth(o.auth)}
}

func (o tpmObject) named() tpm2.NamedHandle {
	return tpm2.NamedHandle{Handle: o.handle, Name: tpm2.TPM2BName{Buffer: o.name}}
}

func ownerAuth() tpm2.AuthHandle {
	return tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
}

// ownerErr turns an owner-authorisation failure into ErrOwnerAuth.
func ownerErr(what string, err error) error {
	if errors.Is(err, tpm2.TPMRCBadAuth) || errors.Is(err, tpm2.TPMRCAuthFail) {
		return fmt.Errorf("%w (%s: %w)", ErrOwnerAuth, what, err)
	}
	if errors.Is(err, tpm2.TPMRCNVSpace) {
		return fmt.Errorf("tpmstore: %s: the TPM has no room left for persistent objects or NV indices (TPM_RC_NV_SPACE); `tpm2_getcap handles-persistent` and `tpm2_getcap handles-nv-index` list what uses it: %w", what, err)
	}
	return fmt.Errorf("tpmstore: %s: %w", what, err)
}

// randomAuth returns a fresh 32-byte authValue.
func (s *Store) randomAuth() ([]byte, error) {
	b := make([]byte, 32)
	if _, err := io.ReadFull(s.rand, b); err != nil {
		return nil, fmt.Errorf("tpmstore: random: %w", err)
	}
	return b, nil
}

// freeHandle picks a random handle in [first, last] that the TPM does
// not use (one TPM2_GetCapability).
func (s *Store) freeHandle(first, last tpm2.TPMHandle) (tpm2.TPMHandle, error) {
	rsp, err := tpm2.GetCapability{
		Capability:    tpm2.TPMCapHandles,
		Property:      uint32(first),
		PropertyCount: 256,
	}.Execute(s.tpm)
	if err != nil {
		return 0, fmt.Errorf("tpmstore: listing TPM handles: %w", err)
	}
	hs, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		return 0, fmt.Errorf("tpmstore: listing TPM handles: %w", err)
	}
	used := map[tpm2.TPMHandle]bool{}
	for _, h := range hs.Handle {
		used[h] = true
	}
	span := big.NewInt(int64(last-first) + 1)
	for range 64 {
		n, err := rand.Int(s.rand, span)
		if err != nil {
			return 0, fmt.Errorf("tpmstore: random: %w", err)
		}
		h := first + tpm2.TPMHandle(n.Int64())
		if !used[h] {
			return h, nil
		}
	}
	return 0, fmt.Errorf("tpmstore: no free TPM handle found in 0x%08x-0x%08x", uint32(first), uint32(last))
}

// anchorTemplate is the persistent anchor key: HMAC-SHA256, noDA, used
// with its authValue. Its authPolicy is the store's mark (anchorMark):
// no policy session can reach that value, so the key is used with its
// authValue only, and the mark says which store made it.
func anchorTemplate(mark []byte) tpm2.TPMTPublic {
	t := hmacKeyTemplate()
	t.AuthPolicy = tpm2.TPM2BDigest{Buffer: mark}
	return t
}

// anchorMark is the authPolicy of every anchor key a store makes:
// HMAC-SHA256 keyed with the counter index's authValue, which a store
// keeps across resets. It lets a copy of the state made before a reset
// recognise the store's later anchor key at its handle (and remove it
// when it is reset), while another store's anchor, whose counter index
// has another authValue, never matches. It is not a policy anyone can
// satisfy (it is no policy digest's preimage chain), so it adds no way
// to use the key; and it reveals nothing of the counter's authValue.
func anchorMark(counterAuth []byte) []byte {
	m := hmac.New(sha256.New, counterAuth)
	m.Write([]byte("tpm-fido anchor key of the key store with this counter index"))
	return m.Sum(nil)
}

// newAnchorKey creates an anchor key with the authValue auth (fresh
// random bytes) and the store's mark under the SRK and leaves it loaded
// as a transient object (not in the slot cache; the caller persists or
// flushes it).
func (s *Store) newAnchorKey(auth, mark []byte) (tpmObject, tpm2.NamedHandle, error) {
	var obj createdObject
	err := s.withReload(func() error {
		var err error
		obj, err = s.createLoaded(anchorTemplate(mark), &tpm2.TPMSSensitiveCreate{UserAuth: tpm2.TPM2BAuth{Buffer: auth}})
		return err
	})
	if err != nil {
		return tpmObject{}, tpm2.NamedHandle{}, fmt.Errorf("tpmstore: create the TPM anchor key: %w", err)
	}
	return tpmObject{name: obj.handle.Name.Buffer, auth: auth}, obj.handle, nil
}

// persistAnchor makes the transient anchor key t persistent at h and
// flushes t.
func (s *Store) persistAnchor(t tpm2.NamedHandle, h tpm2.TPMHandle) error {
	_, err := tpm2.EvictControl{Auth: ownerAuth(), ObjectHandle: t, PersistentHandle: h}.Execute(s.tpm)
	if ferr := s.flush(t.Handle); ferr != nil {
		s.log.Warn("flush the transient anchor key", "err", ferr)
	}
	if err != nil {
		return ownerErr(fmt.Sprintf("make the anchor key persistent at 0x%08x", uint32(h)), err)
	}
	return nil
}

// ownedAnchorAt reads the public area at persistent handle h and reports
// whether an object is there and whether it has the template of a
// tpm-fido anchor key, and its name. The template alone does not say
// whose anchor it is (provenAnchor does).
func (s *Store) ownedAnchorAt(h tpm2.TPMHandle) (present, tmpl bool, name []byte, err error) {
	present, tmpl, name, _, err = s.readAnchorAt(h)
	return present, tmpl, name, err
}

// readAnchorAt is ownedAnchorAt that also returns the key's authPolicy,
// the mark of the store that made it (empty for anchor keys made before
// marks).
func (s *Store) readAnchorAt(h tpm2.TPMHandle) (present, tmpl bool, name, mark []byte, err error) {
	var rsp *tpm2.ReadPublicResponse
	err = s.retryObjectMemory(func() error {
		var err error
		rsp, err = tpm2.ReadPublic{ObjectHandle: h}.Execute(s.tpm)
		return err
	})
	if errors.Is(err, tpm2.TPMRCHandle) {
		return false, false, nil, nil, nil
	}
	if err != nil {
		return false, false, nil, nil, fmt.Errorf("tpmstore: read the object at 0x%08x: %w", uint32(h), err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return true, false, nil, nil, nil
	}
	// Everything but the unique field (the key's own) and the authPolicy
	// (the store's mark) must be the template's.
	want := anchorTemplate(nil)
	got := *pub
	got.Unique = want.Unique
	got.AuthPolicy = want.AuthPolicy
	tmpl = bytes.Equal(tpm2.Marshal(got), tpm2.Marshal(want))
	return true, tmpl, rsp.Name.Buffer, pub.AuthPolicy.Buffer, nil
}

// ownershipProbe is what the store asks a persistent anchor key to
// HMAC to prove that it takes the store's authValue.
var ownershipProbe = []byte("tpm-fido: is this key ours?")

// provenAnchor reports whether the object at o.handle is present and is
// an anchor key of this store, and its name. The template is checked
// first (a foreign object is never used, so a wrong authValue can never
// count against the TPM's dictionary-attack protection: the anchor
// template has noDA); then the object must have o's name, when o
// records one; or carry the store's mark, when mark is not nil (a later
// anchor key of the store, which a copy of the state from before a
// reset does not know by name); or else take o's authValue (one
// TPM2_HMAC). A key of the anchor's template alone proves nothing:
// another user's store uses the same.
func (s *Store) provenAnchor(o tpmObject, mark []byte) (present, ours bool, name []byte, err error) {
	present, tmpl, name, got, err := s.readAnchorAt(o.handle)
	if err != nil || !present || !tmpl {
		return present, false, name, err
	}
	if o.name != nil && bytes.Equal(name, o.name) {
		return true, true, name, nil
	}
	if len(mark) > 0 && hmac.Equal(got, mark) {
		return true, true, name, nil
	}
	if o.name != nil || o.auth == nil {
		return true, false, name, nil
	}
	_, err = s.anchorHMAC(tpmObject{handle: o.handle, name: name, auth: o.auth}, ownershipProbe)
	switch {
	case err == nil:
		return true, true, name, nil
	case isGone(err):
		return true, false, name, nil
	}
	return true, false, name, err
}

// errNotOurs says that the object at a recorded handle is not the one
// the store recorded there; it was left alone.
var errNotOurs = errors.New("not this key store's; left alone")

// evictAnchor removes the anchor key o stands for, if it is at its
// handle and proves to be it (provenAnchor, by name or authValue);
// another object there is left alone (errNotOurs).
func (s *Store) evictAnchor(o tpmObject) error {
	present, ours, name, err := s.provenAnchor(o, nil)
	switch {
	case err != nil || !present:
		return err
	case !ours:
		return fmt.Errorf("tpmstore: the persistent object at 0x%08x: %w", uint32(o.handle), errNotOurs)
	}
	return s.evictAt(o.handle, name)
}

// evictAt removes the persistent object at h, whose name is name: only
// for an object provenAnchor has just proven to be the store's.
// The TPM loads the object into a free transient slot for the command,
// so a TPM without a resource manager still holding a dead process's
// objects is cleaned up once (retryObjectMemory).
func (s *Store) evictAt(h tpm2.TPMHandle, name []byte) error {
	err := s.retryObjectMemory(func() error {
		_, err := tpm2.EvictControl{
			Auth:             ownerAuth(),
			ObjectHandle:     tpm2.NamedHandle{Handle: h, Name: tpm2.TPM2BName{Buffer: name}},
			PersistentHandle: h,
		}.Execute(s.tpm)
		return err
	})
	if err != nil {
		return ownerErr(fmt.Sprintf("remove the anchor key at 0x%08x", uint32(h)), err)
	}
	return nil
}

// counterPublic is the public area of the counter index at h.
func counterPublic(h tpm2.TPMHandle, written bool) tpm2.TPMSNVPublic {
	return tpm2.TPMSNVPublic{
		NVIndex: h,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			NT:        tpm2.TPMNTCounter,
			AuthRead:  true,
			AuthWrite: true,
			NoDA:      true,
			Written:   written,
		},
		DataSize: 8,
	}
}

func counterName(h tpm2.TPMHandle) ([]byte, error) {
	pub := counterPublic(h, true)
	n, err := tpm2.NVName(&pub)
	if err != nil {
		return nil, err
	}
	return n.Buffer, nil
}

// newCounterIndex defines the counter index at h with the authValue
// auth (fresh random bytes) and increments it once (an NV counter can be
// read only once written). It returns the index and its first value.
func (s *Store) newCounterIndex(h tpm2.TPMHandle, auth []byte) (tpmObject, uint64, error) {
	_, err := tpm2.NVDefineSpace{
		AuthHandle: ownerAuth(),
		Auth:       tpm2.TPM2BAuth{Buffer: auth},
		PublicInfo: tpm2.New2B(counterPublic(h, false)),
	}.Execute(s.tpm)
	if err != nil {
		return tpmObject{}, 0, ownerErr(fmt.Sprintf("define the counter NV index 0x%08x", uint32(h)), err)
	}
	unwritten := counterPublic(h, false)
	n0, err := tpm2.NVName(&unwritten)
	if err != nil {
		return tpmObject{}, 0, err
	}
	o := tpmObject{handle: h, name: n0.Buffer, auth: auth}
	if err := s.nvIncrement(o); err != nil {
		return tpmObject{}, 0, err
	}
	if o.name, err = counterName(h); err != nil {
		return tpmObject{}, 0, err
	}
	v, err := s.nvRead(o)
	if err != nil {
		return tpmObject{}, 0, err
	}
	return o, v, nil
}

// undefineCounter removes the counter index o stands for, if it is at
// its handle and proves to be it: the public area is a tpm-fido counter
// index's (so it is noDA, and a wrong authValue counts nowhere) and it
// takes o's authValue (TPM2_NV_Read, or TPM2_NV_Increment while it was
// never written, as after an interrupted first start). Another index
// there is left alone (errNotOurs).
func (s *Store) undefineCounter(o tpmObject) error {
	rsp, err := tpm2.NVReadPublic{NVIndex: o.handle}.Execute(s.tpm)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("tpmstore: read NV index 0x%08x: %w", uint32(o.handle), err)
	}
	pub, err := rsp.NVPublic.Contents()
	if err != nil {
		return err
	}
	got := tpm2.Marshal(*pub)
	written := bytes.Equal(got, tpm2.Marshal(counterPublic(o.handle, true)))
	notOurs := fmt.Errorf("tpmstore: the NV index at 0x%08x: %w", uint32(o.handle), errNotOurs)
	if (!written && !bytes.Equal(got, tpm2.Marshal(counterPublic(o.handle, false)))) || o.auth == nil {
		return notOurs
	}
	probe := tpmObject{handle: o.handle, name: rsp.NVName.Buffer, auth: o.auth}
	if written {
		_, err = s.nvRead(probe)
	} else {
		err = s.nvIncrement(probe)
	}
	switch {
	case isGone(err):
		return notOurs
	case err != nil:
		return err
	}
	name := rsp.NVName
	if !written {
		// The increment set TPMA_NV_WRITTEN, which changed the name: the
		// written counter index's.
		n, err := counterName(o.handle)
		if err != nil {
			return err
		}
		name = tpm2.TPM2BName{Buffer: n}
	}
	_, err = tpm2.NVUndefineSpace{AuthHandle: ownerAuth(), NVIndex: tpm2.NamedHandle{Handle: o.handle, Name: name}}.Execute(s.tpm)
	if err != nil {
		return ownerErr(fmt.Sprintf("remove the NV index 0x%08x", uint32(o.handle)), err)
	}
	return nil
}

func (s *Store) nvIncrement(o tpmObject) error {
	if _, err := (tpm2.NVIncrement{AuthHandle: o.authHandle(), NVIndex: o.named()}).Execute(s.tpm); err != nil {
		return fmt.Errorf("tpmstore: TPM2_NV_Increment 0x%08x: %w", uint32(o.handle), err)
	}
	return nil
}

func (s *Store) nvRead(o tpmObject) (uint64, error) {
	rsp, err := tpm2.NVRead{AuthHandle: o.authHandle(), NVIndex: o.named(), Size: 8}.Execute(s.tpm)
	if err != nil {
		return 0, fmt.Errorf("tpmstore: TPM2_NV_Read 0x%08x: %w", uint32(o.handle), err)
	}
	if len(rsp.Data.Buffer) != 8 {
		return 0, fmt.Errorf("tpmstore: TPM2_NV_Read 0x%08x returned %d bytes", uint32(o.handle), len(rsp.Data.Buffer))
	}
	return binary.BigEndian.Uint64(rsp.Data.Buffer), nil
}

// anchorHMAC computes HMAC-SHA256 with the anchor key k.
// The TPM loads a persistent key into a free transient slot while it
// uses it; the slot cache keeps one free (Config.MaxLoaded), and a TPM
// without a resource manager still full of a dead process's objects is
// cleaned up once (retryObjectMemory).
func (s *Store) anchorHMAC(k tpmObject, data []byte) ([]byte, error) {
	var rsp *tpm2.HmacResponse
	err := s.retryObjectMemory(func() error {
		var err error
		rsp, err = tpm2.Hmac{
			Handle:  k.authHandle(),
			Buffer:  tpm2.TPM2BMaxBuffer{Buffer: data},
			HashAlg: tpm2.TPMAlgSHA256,
		}.Execute(s.tpm)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("tpmstore: TPM2_HMAC with the anchor key 0x%08x: %w", uint32(k.handle), err)
	}
	if len(rsp.OutHMAC.Buffer) != 32 {
		return nil, fmt.Errorf("tpmstore: TPM2_HMAC returned %d bytes", len(rsp.OutHMAC.Buffer))
	}
	return rsp.OutHMAC.Buffer, nil
}

// isGone reports whether err says a persistent object or NV index is
// not there, or no longer takes the recorded authValue (a reset put a
// new key at the handle).
func isGone(err error) bool {
	return errors.Is(err, tpm2.TPMRCHandle) || errors.Is(err, tpm2.TPMRCBadAuth) ||
		errors.Is(err, tpm2.TPMRCAuthFail) || errors.Is(err, tpm2.TPMRCReferenceH0)
}

// Counter blocks: block b of a store covers the signature counter values
// (base + (b-n0)*counterReserve, base + (b-n0+1)*counterReserve], where
// b is a value of the counter index and n0 its value when the store
// defined it. Values are handed out from a block only after the index
// was incremented to it.

// reserved is the last counter value the store may hand out without
// incrementing the index: the end of the block it last reached.
func (s *Store) reserved() uint32 { return counterBlockEnd(s.ctrBase, s.ctrN0, s.ctrBlock) }

// counterBlockEnd is the last counter value of block b (capped at the
// 32-bit maximum).
func counterBlockEnd(base uint32, n0, b uint64) uint32 {
	if b < n0 {
		return base
	}
	v := uint64(base) + (b-n0+1)*counterReserve
	if v > uint64(^uint32(0)) || b-n0+1 > uint64(^uint32(0)) {
		return ^uint32(0)
	}
	return uint32(v)
}
