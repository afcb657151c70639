package tpmstore

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/google/go-tpm-tools/simulator"
	"github.com/google/go-tpm/tpm2/transport"
	bolt "go.etcd.io/bbolt"

	"github.com/tpm-fido/tpm-fido/tpmstore/tpmtest"
)

// v1Fixture is testdata/state-v1.json: what the version-1 store held in
// testdata/state-v1.db when it wrote it (see testdata/state-v1-gen.go).
type v1Fixture struct {
	Seed        int64    `json:"simulatorSeed"`
	PIN         string   `json:"pin"`
	Counter     uint32   `json:"lastCounter"`
	Count       int      `json:"residents"`
	NonResident string   `json:"nonResidentId"`
	NonResRP    string   `json:"nonResidentRp"`
	Revoked     []string `json:"revokedIds"`
	RPs         []struct {
		ID    string `json:"id"`
		Name  string `json:"name"`
		Hash  string `json:"hash"`
		Creds []struct {
			ID          string `json:"id"`
			UserID      string `json:"userId"`
			UserName    string `json:"userName"`
			DisplayName string `json:"displayName"`
			CredProtect uint8  `json:"credProtect"`
			LargeBlob   string `json:"largeBlobKey"`
			Created     int64  `json:"created"`
			PublicKey   string `json:"publicKey"`
		} `json:"credentials"`
	} `json:"rps"`
}

func unhex(t testing.TB, s string) []byte {
	t.Helper()
	b, err := hex.DecodeString(s)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func stateVersionOf(t testing.TB, path string) byte {
	t.Helper()
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	var v byte
	db.View(func(tx *bolt.Tx) error {
		v = tx.Bucket(bucketMeta).Get(keyVersion)[0]
		return nil
	})
	return v
}

// TestMigrateV1State opens a state.db written by the version-1 store
// (real TPM blobs, made on the reference simulator with a fixed seed, so
// the same "machine" can open it here) and checks the upgrade keeps
// everything: every resident with every field, newest first per RP, RP
// names and counts, the revoked IDs still revoked, every resident's key
// still signing, the PIN, the counter; and that the indexes it built are
// what the live code maintains, also after further changes.
func TestMigrateV1State(t *testing.T) {
	var fx v1Fixture
	raw, err := os.ReadFile("testdata/state-v1.json")
	if err != nil {
		t.Fatal(err)
	}
	if err := json.Unmarshal(raw, &fx); err != nil {
		t.Fatal(err)
	}
	sim, err := simulator.GetWithFixedSeedInsecure(fx.Seed)
	if err != nil {
		t.Fatal(err)
	}
	tpm := transport.FromReadWriteCloser(sim)
	t.Cleanup(func() { tpm.Close() })
	dir := t.TempDir()
	db, err := os.ReadFile("testdata/state-v1.db")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, stateFile)
	if err := os.WriteFile(path, db, 0o600); err != nil {
		t.Fatal(err)
	}
	if v := stateVersionOf(t, path); v != 1 {
		t.Fatalf("fixture has version %d", v)
	}
	ct := tpmtest.NewCountingTPM(tpm)
	s, err := Open(Config{TPM: ct, Dir: dir})
	if err != nil {
		t.Fatalf("Open of a version-1 state: %v", err)
	}
	// The layout upgrade costs no TPM command; this fixture predates the
	// TPM anchor too, which its first Open creates once (13 commands,
	// TestUpgradeToAnchor). Later starts cost the usual 3.
	if n := ct.Total(); n != 13 {
		t.Errorf("Open with migration: %d TPM commands, want 13 (the TPM anchor's one-time upgrade)", n)
	}
	defer func() { s.Close() }()
	check := func(s *Store) {
		t.Helper()
		if n, err := s.ResidentCount(); err != nil || n != fx.Count {
			t.Fatalf("ResidentCount %d (%v), fixture %d", n, err, fx.Count)
		}
		if n, err := s.ResidentRPCount(); err != nil || n != len(fx.RPs) {
			t.Fatalf("ResidentRPCount %d (%v), fixture %d", n, err, len(fx.RPs))
		}
		rps, err := s.ResidentRPs()
		if err != nil {
			t.Fatal(err)
		}
		if len(rps) != len(fx.RPs) {
			t.Fatalf("%d RPs, fixture %d", len(rps), len(fx.RPs))
		}
		for i, want := range fx.RPs {
			rp := rps[i]
			noUV := 0
			for _, c := range want.Creds {
				if c.CredProtect <= 1 {
					noUV++
				}
			}
			if rp.ID != want.ID || rp.Name != want.Name || hex.EncodeToString(rp.Hash[:]) != want.Hash ||
				rp.Count != len(want.Creds) || rp.CountWithoutUV != noUV {
				t.Fatalf("RP %d: %+v, fixture %s %q %d (%d without UV)", i, rp, want.ID, want.Name, len(want.Creds), noUV)
			}
			got, err := s.Residents(rp.Hash)
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(want.Creds) {
				t.Fatalf("RP %s: %d residents, fixture %d", rp.ID, len(got), len(want.Creds))
			}
			for j, w := range want.Creds {
				g := got[j]
				pk, _ := g.PublicKey.Bytes()
				if hex.EncodeToString(g.CredentialID) != w.ID || string(g.User.ID) != w.UserID || g.User.Name != w.UserName ||
					g.User.DisplayName != w.DisplayName || g.CredProtect != w.CredProtect || hex.EncodeToString(g.LargeBlobKey) != w.LargeBlob ||
					g.Created.UnixNano() != w.Created || hex.EncodeToString(pk) != w.PublicKey || g.RPID != rp.ID {
					t.Fatalf("RP %s credential %d differs from the fixture: %+v", rp.ID, j, g)
				}
			}
			noUVList := listPaged(t, s, rp.Hash, ResidentsWithoutUV, 2)
			if len(noUVList) != noUV {
				t.Fatalf("RP %s: %d without UV listed, %d counted", rp.ID, len(noUVList), noUV)
			}
		}
		checkResidentLayout(t, s)
	}
	check(s)
	if v := func() byte { s.Close(); return stateVersionOf(t, path) }(); v != stateVersion {
		t.Fatalf("state version %d after the upgrade", v)
	}
	// A second open finds version 2 and does not migrate again.
	ct.Reset()
	if s, err = Open(Config{TPM: ct, Dir: dir}); err != nil {
		t.Fatal(err)
	}
	if n := ct.Total(); n != 3 {
		t.Errorf("second Open: %d TPM commands, want the usual 3", n)
	}
	check(s)

	// Every resident's key still signs, and a non-resident ID opens.
	for _, rp := range fx.RPs {
		h := [32]byte(unhex(t, rp.Hash))
		for _, c := range rp.Creds {
			cred, err := s.OpenCredential(h, unhex(t, c.ID))
			if err != nil {
				t.Fatalf("resident %s/%s does not open: %v", rp.ID, c.UserID, err)
			}
			d := sha256.Sum256([]byte(c.ID))
			sig, err := s.Sign(cred, d[:])
			if err != nil {
				t.Fatal(err)
			}
			pub, _ := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), unhex(t, c.PublicKey))
			if !ecdsa.VerifyASN1(pub, d[:], sig) {
				t.Fatalf("resident %s/%s: signature does not verify", rp.ID, c.UserID)
			}
		}
	}
	if _, err := s.OpenCredential(rpHash(fx.NonResRP), unhex(t, fx.NonResident)); err != nil {
		t.Fatalf("non-resident credential: %v", err)
	}
	for _, id := range fx.Revoked {
		for _, rp := range fx.RPs {
			if _, err := s.OpenCredential([32]byte(unhex(t, rp.Hash)), unhex(t, id)); !errors.Is(err, ErrCredentialInvalid) {
				t.Fatalf("revoked ID %s… opens for %s: %v", id[:8], rp.ID, err)
			}
		}
	}
	pin := sha256.Sum256([]byte(fx.PIN))
	if err := s.VerifyPIN([16]byte(pin[:16])); err != nil {
		t.Fatalf("PIN after the upgrade: %v", err)
	}
	if c, err := s.NextCounter(); err != nil || c <= fx.Counter {
		t.Fatalf("counter %d (%v), version 1 had handed out %d", c, err, fx.Counter)
	}
	if s.MaxResidents() != DefaultMaxResidents {
		t.Fatalf("capacity %d", s.MaxResidents())
	}

	// The upgraded state works like a new one: replace by user, delete
	// the newest of an RP (its name moves to the next), add.
	first := fx.RPs[0]
	h := [32]byte(unhex(t, first.Hash))
	newest := first.Creds[0]
	k := residentKeys[0]
	if err := s.PutResident(Resident{CredentialID: bytes.Repeat([]byte{7}, 64), RPID: first.ID, RPIDHash: h, RPName: "renamed RP",
		User: User{ID: []byte(first.Creds[1].UserID)}, PublicKey: k, CredProtect: 3}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteResident(unhex(t, newest.ID)); err != nil {
		t.Fatal(err)
	}
	rp, err := s.ResidentRP(h)
	if err != nil || rp.Count != len(first.Creds)-1 || rp.Name != "renamed RP" {
		t.Fatalf("after replace + delete: %+v %v", rp, err)
	}
	checkResidentLayout(t, s)
}

// downgradeResidents rewrites a version-3 state in dir in the layout of
// version 1 (records keyed by credential ID in "residents", nothing else)
// or 2 (the same, plus indexes holding credential IDs and kept counts),
// as those versions wrote it.
func downgradeResidents(t *testing.T, dir string, version byte) {
	t.Helper()
	db, err := bolt.Open(filepath.Join(dir, stateFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	err = db.Update(func(tx *bolt.Tx) error {
		idx := tx.Bucket(bucketResIndex)
		type kv struct{ k, v []byte }
		var recs, idx2, users2 []kv
		err := idx.ForEach(func(k, v []byte) error {
			if k[32] != classAll {
				return nil
			}
			r, err := decodeRecord(k, v)
			if err != nil {
				return err
			}
			id := r.ID
			r.ID = nil // not in the old records
			old, err := json.Marshal(r)
			if err != nil {
				return err
			}
			recs = append(recs, kv{id, old})
			idx2 = append(idx2, kv{k, id})
			if r.withoutUV() {
				idx2 = append(idx2, kv{idxKey(r.RPIDHash, classNoUV, r.Seq), id})
			}
			users2 = append(users2, kv{userKey(r.RPIDHash, r.UserID), id})
			return nil
		})
		if err != nil {
			return err
		}
		seq := idx.Sequence()
		if err := deleteResidentBuckets(tx, bucketResIndex, bucketResID, bucketResUser); err != nil {
			return err
		}
		put := func(name []byte, l []kv) error {
			b, err := tx.CreateBucket(name)
			if err != nil {
				return err
			}
			for _, e := range l {
				if err := b.Put(e.k, e.v); err != nil {
					return err
				}
			}
			return nil
		}
		if err := put(bucketResidents, recs); err != nil {
			return err
		}
		if err := tx.Bucket(bucketResidents).SetSequence(seq); err != nil {
			return err
		}
		m := tx.Bucket(bucketMeta)
		if version == 2 {
			if err := put(bucketResIndex, idx2); err != nil {
				return err
			}
			if err := put(bucketResUser, users2); err != nil {
				return err
			}
		} else {
			if err := deleteResidentBuckets(tx, bucketResRP, bucketResRPID); err != nil {
				return err
			}
			for _, k := range [][]byte{keyResCount, keyResRPs, keyResMax} {
				if err := m.Delete(k); err != nil {
					return err
				}
			}
		}
		return m.Put(keyVersion, []byte{version})
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestMigrateLarge turns a store of 3,000 residents over 200 RPs, shaped
// by random replacements and deletions, back into the layout of version
// 1 and of version 2, reopens it and checks the upgrade rebuilt exactly
// what the live code had maintained: the same listings in the same
// order, the same counts and RP names; and that new credentials still
// come after the old ones.
func TestMigrateLarge(t *testing.T) {
	for _, from := range []byte{1, 2} {
		t.Run(fmt.Sprintf("version%d", from), func(t *testing.T) {
			tpm := openSimulator(t)
			dir := t.TempDir()
			s, err := Open(Config{TPM: tpm, Dir: dir})
			if err != nil {
				t.Fatal(err)
			}
			var rs []Resident
			for i := range 3000 {
				rs = append(rs, genResident(fmt.Sprintf("rp%03d.example", i%200), fmt.Sprintf("user%d", i), uint8(1+i%3)))
			}
			putResidentsBulk(t, s, rs)
			rng := mrand.New(mrand.NewPCG(1, 2))
			for range 50 {
				old := rs[rng.IntN(len(rs))]
				if rng.IntN(2) == 0 {
					s.DeleteResident(old.CredentialID)
				} else {
					s.PutResident(genResident(old.RPID, string(old.User.ID), uint8(1+rng.IntN(3))))
				}
			}
			type snap struct {
				rps   []RP
				lists map[[32]byte][2][]string
			}
			take := func() snap {
				sn := snap{lists: map[[32]byte][2][]string{}}
				var err error
				if sn.rps, err = s.ResidentRPs(); err != nil {
					t.Fatal(err)
				}
				for _, rp := range sn.rps {
					sn.lists[rp.Hash] = [2][]string{ids(listPaged(t, s, rp.Hash, AllResidents, 0)), ids(listPaged(t, s, rp.Hash, ResidentsWithoutUV, 0))}
				}
				return sn
			}
			before := take()
			count, _ := s.ResidentCount()
			s.Close()
			downgradeResidents(t, dir, from)
			if v := stateVersionOf(t, filepath.Join(dir, stateFile)); v != from {
				t.Fatalf("downgraded to %d", v)
			}
			if s, err = Open(Config{TPM: tpm, Dir: dir}); err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			after := take()
			if n, _ := s.ResidentCount(); n != count {
				t.Fatalf("count %d after the upgrade, %d before", n, count)
			}
			if !slices.Equal(before.rps, after.rps) {
				t.Fatalf("RPs differ after the upgrade")
			}
			for h, l := range before.lists {
				if !slices.Equal(l[0], after.lists[h][0]) || !slices.Equal(l[1], after.lists[h][1]) {
					t.Fatalf("RP %x: listing differs after the upgrade", h[:4])
				}
			}
			checkResidentLayout(t, s)
			// The insertion sequence carried over: a new credential is the
			// newest of its RP.
			r := genResident("rp000.example", "after-upgrade", 1)
			if err := s.PutResident(r); err != nil {
				t.Fatal(err)
			}
			l, _, err := s.ListResidents(rpHash("rp000.example"), AllResidents, nil, 1)
			if err != nil || !bytes.Equal(l[0].CredentialID, r.CredentialID) {
				t.Fatalf("new credential after the upgrade is not the newest: %v", err)
			}
		})
	}
}

// TestStateVersionTooNew: a state written by a newer layout is refused
// untouched.
func TestStateVersionTooNew(t *testing.T) {
	tpm, dir, path := closedState(t)
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyVersion, []byte{stateVersion + 1}) })
	db.Close()
	before, _ := os.ReadFile(path)
	if _, err := Open(Config{TPM: tpm, Dir: dir}); !errors.Is(err, ErrCorruptState) {
		t.Fatalf("Open of version %d: %v", stateVersion+1, err)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
		t.Fatal("state file changed")
	}
}

// TestCapacityStored: the capacity a daemon opens with is stored, so
// later tools see it; 0 keeps it.
func TestCapacityStored(t *testing.T) {
	tpm := openSimulator(t)
	dir := t.TempDir()
	for _, c := range []struct{ cfg, want int }{{0, DefaultMaxResidents}, {20000, 20000}, {0, 20000}, {3, 3}} {
		s, err := Open(Config{TPM: tpm, Dir: dir, MaxResidents: c.cfg})
		if err != nil {
			t.Fatal(err)
		}
		if got := s.MaxResidents(); got != c.want {
			t.Fatalf("MaxResidents %d with Config %d, want %d", got, c.cfg, c.want)
		}
		s.Close()
	}
	s := openStore(t, tpm, dir)
	for i := range 3 {
		if err := s.PutResident(genResident("a.example", fmt.Sprint(i), 1)); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.PutResident(genResident("a.example", "4th", 1)); !errors.Is(err, ErrStoreFull) {
		t.Fatalf("4th of 3: %v", err)
	}
	// Replacing one when full is allowed.
	if err := s.PutResident(genResident("a.example", "1", 2)); err != nil {
		t.Fatalf("replacement when full: %v", err)
	}
	checkResidentLayout(t, s)
}

// TestPutResidentsBatch: a batch is PutResident in order, in one
// transaction: later entries replace earlier ones of the same RP and
// user, and a batch that does not fit stores nothing.
func TestPutResidentsBatch(t *testing.T) {
	s, err := Open(Config{TPM: openSimulator(t), Dir: t.TempDir(), MaxResidents: 5})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	a, b, a2 := genResident("x.example", "a", 1), genResident("x.example", "b", 2), genResident("x.example", "a", 3)
	if err := s.PutResidents([]Resident{a, b, a2}); err != nil {
		t.Fatal(err)
	}
	got, _ := s.Residents(rpHash("x.example"))
	if !slices.Equal(ids(got), ids([]Resident{a2, b})) {
		t.Fatalf("batch: %v", ids(got))
	}
	var four []Resident
	for i := range 4 {
		four = append(four, genResident("y.example", fmt.Sprint(i), 1))
	}
	if err := s.PutResidents(four); !errors.Is(err, ErrStoreFull) {
		t.Fatalf("6 of 5: %v", err)
	}
	if n, _ := s.ResidentCount(); n != 2 {
		t.Fatalf("%d stored after a refused batch", n)
	}
	checkResidentLayout(t, s)
}
