package tpmstore

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	bolt "go.etcd.io/bbolt"

	"github.com/tpm-fido/tpm-fido/tpmstore/tpmtest"
)

// snapshot copies state.db of a closed store; restoreState puts it back.
func snapshot(t *testing.T, dir string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func restoreState(t *testing.T, dir string, b []byte) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, stateFile), b, 0o600); err != nil {
		t.Fatal(err)
	}
}

// stolenMeta reads the meta bucket of a copy of state.db as an attacker
// holding the copy would: from the bytes, through bbolt, not with the
// store's code.
func stolenMeta(t *testing.T, db []byte) map[string][]byte {
	t.Helper()
	p := filepath.Join(t.TempDir(), "stolen.db")
	if err := os.WriteFile(p, db, 0o600); err != nil {
		t.Fatal(err)
	}
	d, err := bolt.Open(p, 0o600, &bolt.Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close()
	meta := map[string][]byte{}
	d.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketMeta).ForEach(func(k, v []byte) error {
			meta[string(k)] = bytes.Clone(v)
			return nil
		})
	})
	return meta
}

// stolenAnchor is the anchor key a stolen meta bucket names.
func stolenAnchor(meta map[string][]byte) tpmObject {
	return tpmObject{
		handle: tpm2.TPMHandle(binary.BigEndian.Uint32(meta[string(keyAnchorHandle)])),
		name:   meta[string(keyAnchorName)],
		auth:   meta[string(keyAnchorAuth)],
	}
}

// TestResetIsFinal: a copy of state.db taken before a reset and put back
// afterwards brings nothing back. Open refuses it (ErrStaleState); in
// the attacker's seat, the copy's anchor key and authValue no longer
// derive its wrapping key (the TPM refuses the HMAC); after
// RecoverStale, the old credential IDs are rejected.
func TestResetIsFinal(t *testing.T) {
	eachBackend(t, func(t *testing.T, tpm transport.TPM, dir string, s *Store) {
		rp := rpHash("example.org")
		plain, err := s.CreateCredential(rp, CredentialOptions{HMACSecret: true})
		if err != nil {
			t.Fatal(err)
		}
		res := residentAndPIN(t, s, rp, CredentialOptions{CredProtect: 2})
		s.Close()
		snap := snapshot(t, dir)
		meta := stolenMeta(t, snap)
		anchor, salt := stolenAnchor(meta), meta[string(keyWrapSalt)]

		s = openStore(t, tpm, dir)
		if err := s.Reset(); err != nil {
			t.Fatalf("Reset: %v", err)
		}
		s.Close()
		restoreState(t, dir, snap)

		_, err = Open(Config{TPM: tpm, Dir: dir})
		t.Logf("Open of the pre-reset copy: %v", err)
		if !errors.Is(err, ErrStaleState) {
			t.Fatalf("Open of the pre-reset copy: %v, want ErrStaleState", err)
		}
		// The attacker's seat: the copy and the TPM, no daemon.
		_, err = tpm2.Hmac{Handle: anchor.authHandle(), Buffer: tpm2.TPM2BMaxBuffer{Buffer: wrapKeyInput(salt)}, HashAlg: tpm2.TPMAlgSHA256}.Execute(tpm)
		var rc tpm2.TPMRC
		if !errors.As(err, &rc) {
			t.Fatalf("TPM2_HMAC with the copy's anchor key and authValue: %v, want a TPM refusal", err)
		}
		t.Logf("TPM2_HMAC with the pre-reset anchor authValue at 0x%08x: TPM response code 0x%03x (%v)", uint32(anchor.handle), uint32(rc), err)

		if err := RecoverStale(Config{TPM: tpm, Dir: dir}); err != nil {
			t.Fatalf("RecoverStale: %v", err)
		}
		s = openStore(t, tpm, dir)
		checkWiped(t, s, rp, "after the restore and recovery", plain, res)
		c, err := s.CreateCredential(rp, CredentialOptions{})
		if err != nil {
			t.Fatal(err)
		}
		signVerify(t, s, c, "x", "new credential after recovery")
		if got := countHandles(t, tpm, anchorHandleFirst, anchorHandleLast); got != 1 {
			t.Errorf("%d anchor keys in the TPM, want 1 (reset must replace, not add)", got)
		}
	})
}

// TestCounterNoRollback: a copy of state.db taken before 1000
// assertions and put back afterwards does not send the signature
// counter back: the next value is above every value handed out.
func TestCounterNoRollback(t *testing.T) {
	eachBackend(t, func(t *testing.T, tpm transport.TPM, dir string, s *Store) {
		c, err := s.CreateCredential(rpHash("example.org"), CredentialOptions{})
		if err != nil {
			t.Fatal(err)
		}
		first, err := s.NextCounter()
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		snap := snapshot(t, dir)
		s = openStore(t, tpm, dir)
		d := sha256.Sum256([]byte("x"))
		var max uint32
		for i := range 1000 {
			max = nextCounterAbove(t, s, max, fmt.Sprintf("assertion %d", i))
			if _, err := s.Sign(c, d[:]); err != nil {
				t.Fatal(err)
			}
		}
		s.Close()
		restoreState(t, dir, snap)
		s = openStore(t, tpm, dir)
		next, err := s.NextCounter()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("counter %d at the snapshot, %d after 1000 assertions, %d after restoring the snapshot", first, max, next)
		if next <= max {
			t.Fatalf("counter after restoring the snapshot: %d, not above %d", next, max)
		}
	})
}

func countHandles(t *testing.T, tpm transport.TPM, first, last tpm2.TPMHandle) int {
	t.Helper()
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(first), PropertyCount: 256}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, h := range hs.Handle {
		if h >= first && h <= last {
			n++
		}
	}
	return n
}

// TestTwoStoresOneTPM: two users' daemons on one TPM get distinct TPM
// objects, and one's reset leaves the other alone.
func TestTwoStoresOneTPM(t *testing.T) {
	tpm := openSimulator(t)
	da, db := t.TempDir(), t.TempDir()
	a := openStore(t, tpm, da)
	rp := rpHash("example.org")
	ca, err := a.CreateCredential(rp, CredentialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	a.Close()
	b := openStore(t, tpm, db)
	cb, err := b.CreateCredential(rp, CredentialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	b.Close()
	// One store open at a time: two stores in one process on a TPM
	// without a resource manager would fight over its 3 object slots.
	a = openStore(t, tpm, da)
	ha, hca := a.anchor.handle, a.counterIdx.handle
	if err := a.Reset(); err != nil {
		t.Fatal(err)
	}
	if _, err := a.OpenCredential(rp, ca.ID); !errors.Is(err, ErrCredentialInvalid) {
		t.Fatalf("a's credential after a's reset: %v", err)
	}
	a.Close()
	b = openStore(t, tpm, db)
	if ha == b.anchor.handle || hca == b.counterIdx.handle {
		t.Fatalf("shared TPM objects: anchors 0x%x 0x%x, counters 0x%x 0x%x",
			uint32(ha), uint32(b.anchor.handle), uint32(hca), uint32(b.counterIdx.handle))
	}
	if _, err := b.OpenCredential(rp, cb.ID); err != nil {
		t.Fatalf("b's credential after a's reset: %v", err)
	}
	if _, err := b.OpenCredential(rp, ca.ID); !errors.Is(err, ErrCredentialInvalid) {
		t.Fatalf("a's credential opened in b: %v", err)
	}
}

// failOnce makes the first command with code cc fail as if the process
// had died there.
type failOnce struct {
	transport.TPM
	cc   tpm2.TPMCC
	done bool
}

func (f *failOnce) Send(b []byte) ([]byte, error) {
	if !f.done && len(b) >= 10 && tpm2.TPMCC(binary.BigEndian.Uint32(b[6:10])) == f.cc {
		f.done = true
		return nil, errors.New("connection lost")
	}
	return f.TPM.Send(b)
}

// TestProvisionInterrupted: a first start that fails half way through
// creating its TPM objects leaves nothing behind once the next start
// has run: exactly one anchor key and one counter index.
func TestProvisionInterrupted(t *testing.T) {
	for _, c := range []struct {
		name string
		cc   tpm2.TPMCC
	}{{"NV_DefineSpace", tpm2.TPMCCNVDefineSpace}, {"NV_Increment", tpm2.TPMCCNVIncrement}, {"NV_Read", tpm2.TPMCCNVRead}, {"HMAC", tpm2.TPMCCHMAC}} {
		cc := c.cc
		t.Run(c.name, func(t *testing.T) {
			tpm := openSimulator(t)
			dir := t.TempDir()
			if _, err := Open(Config{TPM: &failOnce{TPM: tpm, cc: cc}, Dir: dir}); err == nil {
				t.Fatal("Open succeeded through a lost connection")
			}
			s := openStore(t, tpm, dir)
			if _, err := s.CreateCredential(rpHash("a"), CredentialOptions{}); err != nil {
				t.Fatal(err)
			}
			s.Close()
			a := countHandles(t, tpm, anchorHandleFirst, anchorHandleLast)
			c := countHandles(t, tpm, counterIndexFirst, counterIndexLast)
			if a != 1 || c != 1 {
				t.Fatalf("%d anchor keys and %d counter indices in the TPM, want 1 and 1", a, c)
			}
		})
	}
}

// TestOwnerAuthSet: with a password on the owner hierarchy the store
// cannot create its keys and says so.
func TestOwnerAuthSet(t *testing.T) {
	tpm := openSimulator(t)
	if _, err := (tpm2.HierarchyChangeAuth{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		NewAuth:    tpm2.TPM2BAuth{Buffer: []byte("owner-secret")},
	}).Execute(tpm); err != nil {
		t.Fatal(err)
	}
	_, err := Open(Config{TPM: tpm, Dir: t.TempDir()})
	t.Logf("%v", err)
	if !errors.Is(err, ErrOwnerAuth) {
		t.Fatalf("Open with an owner password: %v, want ErrOwnerAuth", err)
	}
}

// v1State writes a state as the store made it before the TPM anchor
// (state layout 1: HMAC key blob, counter reservation on disk) and
// returns a version-1 credential ID made in it, with its CredRandom.
func v1State(t *testing.T, tpm transport.TPM, dir string, rp [32]byte, reserved uint32) (id []byte, credRandom []byte) {
	t.Helper()
	srkRsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm2.FlushContext{FlushHandle: srkRsp.ObjectHandle}.Execute(tpm)
	parent := tpm2.AuthHandle{Handle: srkRsp.ObjectHandle, Name: srkRsp.Name, Auth: tpm2.PasswordAuth(nil)}
	hk, err := tpm2.CreateLoaded{ParentHandle: parent, InPublic: tpm2.New2BTemplate(&[]tpm2.TPMTPublic{hmacKeyTemplate()}[0])}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm2.FlushContext{FlushHandle: hk.ObjectHandle}.Execute(tpm)
	hmacWith := func(data []byte) []byte {
		r, err := tpm2.Hmac{Handle: tpm2.AuthHandle{Handle: hk.ObjectHandle, Name: hk.Name, Auth: tpm2.PasswordAuth(nil)},
			Buffer: tpm2.TPM2BMaxBuffer{Buffer: data}, HashAlg: tpm2.TPMAlgSHA256}.Execute(tpm)
		if err != nil {
			t.Fatal(err)
		}
		return r.OutHMAC.Buffer
	}
	salt := bytes.Repeat([]byte{7}, 32)
	wrap := hmacWith(wrapKeyInput(salt))
	ck, err := tpm2.CreateLoaded{ParentHandle: parent, InPublic: tpm2.New2BTemplate(&[]tpm2.TPMTPublic{credKeyTemplate(nil, nil, nil)}[0])}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	tpm2.FlushContext{FlushHandle: ck.ObjectHandle}.Execute(tpm)
	pub, _ := tpm2.Unmarshal[tpm2.TPMTPublic](ck.OutPublic.Bytes())
	pt, _ := pub.Unique.ECC()
	nonce := bytes.Repeat([]byte{3}, credNonceSize)
	plain := []byte{CredProtectUVOptional | flagHMACSecret}
	plain = binary.BigEndian.AppendUint16(plain, uint16(len(ck.OutPrivate.Buffer)))
	plain = append(append(append(plain, ck.OutPrivate.Buffer...), pt.X.Buffer...), pt.Y.Buffer...)
	m := hmac.New(sha256.New, wrap)
	m.Write([]byte("tpm-fido credential id"))
	m.Write(nonce)
	block, _ := aes.NewCipher(m.Sum(nil))
	aead, _ := cipher.NewGCM(block)
	id = append([]byte{credIDVersionV1}, nonce...)
	id = aead.Seal(id, make([]byte, 12), plain, append(rp[:], credIDVersionV1))
	credRandom = hmacWith(append(append([]byte{hmacDomainCredRandom}, nonce...), 1))

	fp := sha256.Sum256(srkRsp.OutPublic.Bytes())
	db, err := bolt.Open(filepath.Join(dir, stateFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		m, _ := tx.CreateBucket(bucketMeta)
		tx.CreateBucket(bucketResidents)
		return putAll(m, keyVersion, []byte{1}, keySRK, fp[:], keyHMACPub, hk.OutPublic.Bytes(),
			keyHMACPriv, hk.OutPrivate.Buffer, keyWrapSalt, salt, keyCounter, be32(reserved), keyPINRetries, []byte{8})
	})
	if err != nil {
		t.Fatal(err)
	}
	return id, credRandom
}

// TestUpgradeToAnchor: a state made before the TPM anchor is upgraded in
// place: its credential IDs keep working (same key, same hmac-secret
// CredRandom), the counter continues above the old reservation, the
// next start costs 3 TPM commands, and a reset kills the old IDs too.
func TestUpgradeToAnchor(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			tpm := b.open(t)
			dir := t.TempDir()
			rp := rpHash("example.org")
			id, want := v1State(t, tpm, dir, rp, 5000)
			up := tpmtest.NewCountingTPM(tpm)
			s := openStore(t, up, dir)
			t.Logf("upgrade at the first start: %d TPM commands %v", up.Total(), up.Snapshot())
			c, err := s.OpenCredential(rp, id)
			if err != nil {
				t.Fatalf("version-1 ID after the upgrade: %v", err)
			}
			d := sha256.Sum256([]byte("x"))
			if sig, err := s.Sign(c, d[:]); err != nil || !ecdsa.VerifyASN1(c.PublicKey, d[:], sig) {
				t.Fatalf("sign with the version-1 credential: %v", err)
			}
			if got, err := s.CredRandom(c, true); err != nil || !bytes.Equal(got, want) {
				t.Fatalf("CredRandom of the version-1 credential changed: %v", err)
			}
			if n, err := s.NextCounter(); err != nil || n <= 5000 {
				t.Fatalf("counter after the upgrade: %d %v, want above 5000", n, err)
			}
			s.Close()
			ct := tpmtest.NewCountingTPM(tpm)
			s = openStore(t, ct, dir)
			if n := ct.Total(); n != 3 {
				t.Errorf("start after the upgrade: %d TPM commands %v", n, ct.Snapshot())
			}
			if _, err := s.OpenCredential(rp, id); err != nil {
				t.Fatalf("version-1 ID after a restart: %v", err)
			}
			c2, err := s.CreateCredential(rp, CredentialOptions{})
			if err != nil || c2.ID[0] != credIDVersion {
				t.Fatalf("new credential: %v", err)
			}
			if err := s.Reset(); err != nil {
				t.Fatal(err)
			}
			for _, x := range [][]byte{id, c2.ID} {
				if _, err := s.OpenCredential(rp, x); !errors.Is(err, ErrCredentialInvalid) {
					t.Fatalf("ID version %d after reset: %v", x[0], err)
				}
			}
		})
	}
}

// TestResetWithForeignObject: on a TPM without a resource manager
// (swtpm, the simulator, /dev/tpm0) another process may have left a
// transient object loaded. Reset must still complete: making room for the
// old anchor key (a persistent object the TPM loads into a free slot)
// flushes the other process's object, never the new anchor key that is
// about to take the old one's place.
func TestResetWithForeignObject(t *testing.T) {
	eachBackend(t, func(t *testing.T, tpm transport.TPM, dir string, s *Store) {
		rp := rpHash("example.org")
		old, err := s.CreateCredential(rp, CredentialOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// Another process's object, left in the TPM.
		if _, err := (tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}).Execute(tpm); err != nil {
			t.Fatal(err)
		}
		if err := s.Reset(); err != nil {
			t.Fatalf("Reset with another process's object in the TPM: %v", err)
		}
		if _, err := s.OpenCredential(rp, old.ID); !errors.Is(err, ErrCredentialInvalid) {
			t.Fatalf("old ID after the reset: %v", err)
		}
		s.Close()
		s = openStore(t, tpm, dir) // not stale: the new anchor key is in place
		c, err := s.CreateCredential(rp, CredentialOptions{})
		if err != nil {
			t.Fatal(err)
		}
		d := sha256.Sum256([]byte("after the reset"))
		if sig, err := s.Sign(c, d[:]); err != nil || !ecdsa.VerifyASN1(c.PublicKey, d[:], sig) {
			t.Fatalf("sign after the reset: %v", err)
		}
	})
}

// TestResetDoesNotRevokeUnwrappedKeys: what reset cannot undo. Credential
// keys are children of the storage primary key, which reset does not
// change (only clearing the TPM does). Reset makes every credential ID
// impossible to unwrap, but whoever held the state directory and the TPM
// before the reset, and kept the wrapping key it derived then, still
// unwraps an ID (from an old copy of the state, or the one an RP or
// ~/.ssh holds), loads its key and signs after the reset.
func TestResetDoesNotRevokeUnwrappedKeys(t *testing.T) {
	eachBackend(t, func(t *testing.T, tpm transport.TPM, dir string, s *Store) {
		rp := rpHash("ssh:")
		c, err := s.CreateCredential(rp, CredentialOptions{CredProtect: 2})
		if err != nil {
			t.Fatal(err)
		}
		s.Close()
		kept := bytes.Clone(newThief(t, tpm, dir).wrap) // before the reset

		s = openStore(t, tpm, dir)
		if err := s.Reset(); err != nil {
			t.Fatal(err)
		}
		if _, err := s.OpenCredential(rp, c.ID); !errors.Is(err, ErrCredentialInvalid) {
			t.Fatalf("the daemon after the reset: %v, want ErrCredentialInvalid", err)
		}
		s.Close()
		th := newThief(t, tpm, dir)
		th.wrap = kept
		k := th.loadKey(rp, c.ID)
		d := sha256.Sum256([]byte("after the reset"))
		sig, err := th.sign(k, tpm2.PasswordAuth(nil), d[:])
		if err != nil || !ecdsa.VerifyASN1(c.PublicKey, d[:], sig) {
			t.Fatalf("a key unwrapped before the reset, after it: %v; docs/threat-model.md says it still signs", err)
		}
		t.Logf("a key unwrapped before the reset still signs after it")
	})
}
