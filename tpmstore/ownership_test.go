package tpmstore

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	bolt "go.etcd.io/bbolt"
)

// The store removes a TPM object only when it proves to be its own, never
// because it has the template of a tpm-fido anchor key or counter index:
// another user's key store on the same TPM has the same templates.

// evictAtForTest removes whatever persistent object is at h, as another program
// with the (empty) owner authorisation can.
func evictAtForTest(t *testing.T, tpm transport.TPM, h tpm2.TPMHandle) {
	t.Helper()
	rsp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(tpm)
	if err != nil {
		t.Fatalf("ReadPublic 0x%08x: %v", uint32(h), err)
	}
	if _, err := (tpm2.EvictControl{Auth: ownerAuth(), ObjectHandle: tpm2.NamedHandle{Handle: h, Name: rsp.Name}, PersistentHandle: h}).Execute(tpm); err != nil {
		t.Fatalf("EvictControl 0x%08x: %v", uint32(h), err)
	}
}

// persistForTest creates a primary key with the template in the owner
// hierarchy and makes it persistent at h; it returns its name.
func persistForTest(t *testing.T, tpm transport.TPM, h tpm2.TPMHandle, tmpl tpm2.TPMTPublic, auth []byte) []byte {
	t.Helper()
	p, err := tpm2.CreatePrimary{
		PrimaryHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		InSensitive:   tpm2.TPM2BSensitiveCreate{Sensitive: &tpm2.TPMSSensitiveCreate{UserAuth: tpm2.TPM2BAuth{Buffer: auth}}},
		InPublic:      tpm2.New2B(tmpl),
	}.Execute(tpm)
	if err != nil {
		t.Fatalf("CreatePrimary: %v", err)
	}
	defer tpm2.FlushContext{FlushHandle: p.ObjectHandle}.Execute(tpm)
	if _, err := (tpm2.EvictControl{Auth: ownerAuth(), ObjectHandle: tpm2.NamedHandle{Handle: p.ObjectHandle, Name: p.Name}, PersistentHandle: h}).Execute(tpm); err != nil {
		t.Fatalf("EvictControl to 0x%08x: %v", uint32(h), err)
	}
	return p.Name.Buffer
}

// nameAt is the name of the persistent object at h, nil if there is none.
func nameAt(t *testing.T, tpm transport.TPM, h tpm2.TPMHandle) []byte {
	t.Helper()
	rsp, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(tpm)
	if errors.Is(err, tpm2.TPMRCHandle) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return rsp.Name.Buffer
}

// otherStoresAnchor is what another user's key store keeps at its anchor
// handle: the anchor template, with that store's own mark and authValue.
func otherStoresAnchor() (tpm2.TPMTPublic, []byte) {
	return anchorTemplate(anchorMark(bytes.Repeat([]byte{0x0B}, 32))), bytes.Repeat([]byte{0x0A}, 32)
}

// signWorks creates a credential in s and signs with it.
func signWorks(t *testing.T, s *Store) {
	t.Helper()
	c, err := s.CreateCredential(rpHash("example.org"), CredentialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	d := sha256.Sum256([]byte("signed"))
	sig, err := s.Sign(c, d[:])
	if err != nil || !ecdsa.VerifyASN1(c.PublicKey, d[:], sig) {
		t.Fatalf("sign: %v", err)
	}
}

// TestResetLeavesOtherObjects: when the object at a store's recorded
// anchor handle is not its own — another user's key store's anchor key
// (same template, another mark and authValue), or another program's
// object — a reset, of a stale state or of an open store, leaves it
// where it is and puts the new anchor key at a new handle; it never
// fails for it, so reset is never stuck.
func TestResetLeavesOtherObjects(t *testing.T) {
	otherAnchor, otherAuth := otherStoresAnchor()
	for _, b := range backends(t) {
		for _, c := range []struct {
			name  string          // stale: replaced while the store was closed; open: while open
			tmpl  tpm2.TPMTPublic // another key store's anchor key, or another program's key
			stale bool
		}{
			// Short names: swtpm's socket path lies under the test's name.
			{"stale/store", otherAnchor, true},
			{"stale/program", tpm2.ECCSRKTemplate, true},
			{"open/store", otherAnchor, false},
			{"open/program", tpm2.ECCSRKTemplate, false},
		} {
			t.Run(b.name+"/"+c.name, func(t *testing.T) {
				tpm := b.open(t)
				dir := t.TempDir()
				s := openStore(t, tpm, dir)
				h := s.anchor.handle
				if c.stale {
					s.Close()
				}
				// Another program removes the store's anchor key, and the
				// free handle goes to someone else's object.
				evictAtForTest(t, tpm, h)
				other := persistForTest(t, tpm, h, c.tmpl, otherAuth)
				if c.stale {
					if _, err := Open(Config{TPM: tpm, Dir: dir}); !errors.Is(err, ErrStaleState) {
						t.Fatalf("Open: %v, want ErrStaleState", err)
					}
					if err := RecoverStale(Config{TPM: tpm, Dir: dir}); err != nil {
						t.Fatalf("RecoverStale: %v", err)
					}
				} else if err := s.Reset(); err != nil {
					t.Fatalf("Reset: %v", err)
				} else {
					s.Close()
				}
				if got := nameAt(t, tpm, h); !bytes.Equal(got, other) {
					t.Fatalf("the object at 0x%08x was removed or replaced by the reset", uint32(h))
				}
				s = openStore(t, tpm, dir)
				if s.anchor.handle == h {
					t.Fatalf("the new anchor key is at the handle another object holds")
				}
				signWorks(t, s)
				// And a further reset is not stuck either.
				if err := s.Reset(); err != nil {
					t.Fatalf("second Reset: %v", err)
				}
				if got := nameAt(t, tpm, h); !bytes.Equal(got, other) {
					t.Fatalf("the second reset removed the object at 0x%08x", uint32(h))
				}
				if n := countHandles(t, tpm, anchorHandleFirst, anchorHandleLast); n != 2 {
					t.Fatalf("%d persistent objects in the anchor range, want 2 (the other one and the store's)", n)
				}
			})
		}
	}
}

// pendingState writes a state as a first start leaves it when it dies
// after recording the TPM objects it is about to create: only the
// pending record, under key.
func pendingState(t *testing.T, dir string, key, rec []byte) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	db, err := bolt.Open(filepath.Join(dir, stateFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		m, err := tx.CreateBucket(bucketMeta)
		if err != nil {
			return err
		}
		return m.Put(key, rec)
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
}

// TestPendingCleanupLeavesOthers: a first start that died after
// recording the handles it had picked leaves a pending record; by the
// time it starts again, another user's key store may hold those very
// handles. The cleanup removes only objects that take the authValue the
// record holds, so the other store's anchor key and counter index stay
// and it keeps working; a record of the older kind, without authValues,
// removes nothing.
func TestPendingCleanupLeavesOthers(t *testing.T) {
	for _, b := range backends(t) {
		for _, legacy := range []bool{false, true} {
			name := b.name + "/with authValues"
			if legacy {
				name = b.name + "/handles only"
			}
			t.Run(name, func(t *testing.T) {
				tpm := b.open(t)
				dirB := t.TempDir()
				other := openStore(t, tpm, dirB)
				signWorks(t, other)
				ha, hc := other.anchor.handle, other.counterIdx.handle
				nameA := nameAt(t, tpm, ha)
				other.Close()

				dirA := filepath.Join(t.TempDir(), "state")
				if legacy {
					pendingState(t, dirA, keyPending, append(be32(uint32(ha)), be32(uint32(hc))...))
				} else {
					rec := append(append(be32(uint32(ha)), bytes.Repeat([]byte{1}, 32)...), append(be32(uint32(hc)), bytes.Repeat([]byte{2}, 32)...)...)
					pendingState(t, dirA, keyPendingAuth, rec)
				}
				s := openStore(t, tpm, dirA)
				if s.anchor.handle == ha || s.counterIdx.handle == hc {
					t.Fatal("the new store took the other store's handles")
				}
				signWorks(t, s)
				s.Close()
				if !bytes.Equal(nameAt(t, tpm, ha), nameA) {
					t.Fatalf("the other store's anchor key at 0x%08x was removed", uint32(ha))
				}
				if _, err := (tpm2.NVReadPublic{NVIndex: hc}).Execute(tpm); err != nil {
					t.Fatalf("the other store's counter index at 0x%08x: %v", uint32(hc), err)
				}
				other = openStore(t, tpm, dirB)
				signWorks(t, other)
			})
		}
	}
}
