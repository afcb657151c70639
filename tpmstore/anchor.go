package tpmstore

import (
	"bytes"
	"crypto/rand"
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
//     with it. Reset replaces it (same handle, new key, new random
//     authValue), so a state.db from before a reset can no longer derive
//     its wrapping key: its credential IDs are dead for good.
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
// with its authValue.
func anchorTemplate() tpm2.TPMTPublic { return hmacKeyTemplate() }

// newAnchorKey creates an anchor key with a fresh authValue under the
// SRK and leaves it loaded as a transient object (not in the slot
// cache; the caller persists or flushes it).
func (s *Store) newAnchorKey() (tpmObject, tpm2.NamedHandle, error) {
	auth, err := s.randomAuth()
	if err != nil {
		return tpmObject{}, tpm2.NamedHandle{}, err
	}
	var obj createdObject
	err = s.withReload(func() error {
		var err error
		obj, err = s.createLoaded(anchorTemplate(), &tpm2.TPMSSensitiveCreate{UserAuth: tpm2.TPM2BAuth{Buffer: auth}})
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
// whether an object is there and whether it is a tpm-fido anchor key
// (the template matches). Another program's object is never evicted.
func (s *Store) ownedAnchorAt(h tpm2.TPMHandle) (present, ours bool, name []byte, err error) {
	var rsp *tpm2.ReadPublicResponse
	err = s.retryObjectMemory(func() error {
		var err error
		rsp, err = tpm2.ReadPublic{ObjectHandle: h}.Execute(s.tpm)
		return err
	})
	if errors.Is(err, tpm2.TPMRCHandle) {
		return false, false, nil, nil
	}
	if err != nil {
		return false, false, nil, fmt.Errorf("tpmstore: read the object at 0x%08x: %w", uint32(h), err)
	}
	pub, err := rsp.OutPublic.Contents()
	if err != nil {
		return true, false, nil, nil
	}
	// Everything but the unique field (the key's own) must be ours.
	want := anchorTemplate()
	got := *pub
	got.Unique = want.Unique
	ours = bytes.Equal(tpm2.Marshal(got), tpm2.Marshal(want))
	return true, ours, rsp.Name.Buffer, nil
}

// evictAnchorAt removes the anchor key at h, if there is one and it is
// a tpm-fido anchor key.
func (s *Store) evictAnchorAt(h tpm2.TPMHandle) error {
	present, ours, name, err := s.ownedAnchorAt(h)
	if err != nil || !present {
		return err
	}
	if !ours {
		return fmt.Errorf("tpmstore: the persistent object at 0x%08x is not a tpm-fido key; left alone", uint32(h))
	}
	_, err = tpm2.EvictControl{
		Auth:             ownerAuth(),
		ObjectHandle:     tpm2.NamedHandle{Handle: h, Name: tpm2.TPM2BName{Buffer: name}},
		PersistentHandle: h,
	}.Execute(s.tpm)
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

// newCounterIndex defines the counter index at h with a fresh authValue
// and increments it once (an NV counter can be read only once written).
// It returns the index and its first value.
func (s *Store) newCounterIndex(h tpm2.TPMHandle) (tpmObject, uint64, error) {
	auth, err := s.randomAuth()
	if err != nil {
		return tpmObject{}, 0, err
	}
	_, err = tpm2.NVDefineSpace{
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

// undefineCounterAt removes the NV index at h if it is a tpm-fido
// counter index (the public area matches).
func (s *Store) undefineCounterAt(h tpm2.TPMHandle) error {
	rsp, err := tpm2.NVReadPublic{NVIndex: h}.Execute(s.tpm)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("tpmstore: read NV index 0x%08x: %w", uint32(h), err)
	}
	pub, err := rsp.NVPublic.Contents()
	if err != nil {
		return err
	}
	for _, w := range []bool{false, true} {
		if bytes.Equal(tpm2.Marshal(*pub), tpm2.Marshal(counterPublic(h, w))) {
			_, err := tpm2.NVUndefineSpace{AuthHandle: ownerAuth(), NVIndex: tpm2.NamedHandle{Handle: h, Name: rsp.NVName}}.Execute(s.tpm)
			if err != nil {
				return ownerErr(fmt.Sprintf("remove the NV index 0x%08x", uint32(h)), err)
			}
			return nil
		}
	}
	return fmt.Errorf("tpmstore: the NV index at 0x%08x is not a tpm-fido counter; left alone", uint32(h))
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
