package tpmstore

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"slices"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// checkResidentLayout recomputes every index entry and kept count from
// the records and compares them with what is stored: a store that drops
// an index entry, leaves a stale one or miscounts fails here.
func checkResidentLayout(t testing.TB, s *Store) {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	err := s.db.View(func(tx *bolt.Tx) error {
		rt, err := residentTx(tx)
		if err != nil {
			return err
		}
		var recs []*residentRecord
		noUV := map[string]bool{} // class-1 keys found
		err = rt.idx.ForEach(func(k, v []byte) error {
			if len(k) != idxKeySize {
				return fmt.Errorf("index key %x", k)
			}
			switch k[32] {
			case classAll:
				r, err := decodeRecord(k, v)
				if err != nil {
					return err
				}
				recs = append(recs, r)
			case classNoUV:
				if len(v) != 0 {
					return fmt.Errorf("class-1 entry %x has a value", k)
				}
				noUV[string(k)] = true
			default:
				return fmt.Errorf("index key %x of class %d", k, k[32])
			}
			return nil
		})
		if err != nil {
			return err
		}
		wantUser := map[string]string{}
		type rpWant struct {
			rec     rpRecord
			nameSeq uint64
		}
		wantRP := map[[32]byte]*rpWant{}
		nNoUV := 0
		for _, r := range recs {
			k := r.key()
			if got := rt.ids.Get(r.ID); !bytes.Equal(got, k) {
				return fmt.Errorf("ID index of %x: %x, want %x", r.ID, got, k)
			}
			if r.withoutUV() {
				nNoUV++
				if !noUV[string(idxKey(r.RPIDHash, classNoUV, r.Seq))] {
					return fmt.Errorf("credProtect-1 resident %x missing from class 1", r.ID)
				}
			}
			uk := string(userKey(r.RPIDHash, r.UserID))
			if _, dup := wantUser[uk]; dup {
				return fmt.Errorf("two credentials for RP %x user %q", r.RPIDHash, r.UserID)
			}
			wantUser[uk] = string(k)
			h := [32]byte(r.RPIDHash)
			w := wantRP[h]
			if w == nil {
				w = &rpWant{rec: rpRecord{ID: r.RPID}}
				wantRP[h] = w
			}
			w.rec.Count++
			if r.withoutUV() {
				w.rec.CountNoUV++
			}
			if r.Seq >= w.nameSeq {
				w.nameSeq, w.rec.Name, w.rec.NameSeq = r.Seq, r.RPName, r.Seq
			}
		}
		if len(noUV) != nNoUV {
			return fmt.Errorf("class 1 has %d entries, records want %d", len(noUV), nNoUV)
		}
		if n := rt.ids.Stats().KeyN; n != len(recs) {
			return fmt.Errorf("ID index has %d entries, %d records", n, len(recs))
		}
		gotUser := map[string]string{}
		rt.users.ForEach(func(k, v []byte) error { gotUser[string(k)] = string(v); return nil })
		if len(gotUser) != len(wantUser) {
			return fmt.Errorf("user index has %d entries, want %d", len(gotUser), len(wantUser))
		}
		for k, v := range wantUser {
			if gotUser[k] != v {
				return fmt.Errorf("user index %x: %x, want %x", k, gotUser[k], v)
			}
		}
		nRP := 0
		err = rt.rps.ForEach(func(k, v []byte) error {
			nRP++
			var r rpRecord
			if err := json.Unmarshal(v, &r); err != nil {
				return err
			}
			w := wantRP[[32]byte(k)]
			if w == nil {
				return fmt.Errorf("RP %x has a record but no credentials", k)
			}
			if r != w.rec {
				return fmt.Errorf("RP %x: %+v, want %+v", k, r, w.rec)
			}
			if rt.rpids.Get(rpIDKey(r.ID, k)) == nil {
				return fmt.Errorf("RP %q missing from the ID index", r.ID)
			}
			return nil
		})
		if err != nil {
			return err
		}
		if nRP != len(wantRP) || rt.rpids.Stats().KeyN != len(wantRP) {
			return fmt.Errorf("%d RP records, %d RP ID entries, want %d", nRP, rt.rpids.Stats().KeyN, len(wantRP))
		}
		if c, _ := rt.count(keyResCount); c != len(recs) {
			return fmt.Errorf("kept count %d, records %d", c, len(recs))
		}
		if c, _ := rt.count(keyResRPs); c != len(wantRP) {
			return fmt.Errorf("kept RP count %d, RPs %d", c, len(wantRP))
		}
		if tx.Bucket(bucketResidents) != nil {
			return errors.New("the version-1/2 residents bucket is still there")
		}
		return nil
	})
	if err != nil {
		t.Fatalf("resident layout: %v", err)
	}
}

// residentKeys are a few P-256 keys shared by generated records (the
// store only checks a resident's public key is a valid P-256 point).
var residentKeys = func() []*ecdsa.PublicKey {
	var ks []*ecdsa.PublicKey
	for range 8 {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			panic(err)
		}
		ks = append(ks, &k.PublicKey)
	}
	return ks
}()

// genResident makes a resident record with a random 64-byte ID.
func genResident(rp, user string, credProtect uint8) Resident {
	id := make([]byte, 64)
	rand.Read(id)
	return Resident{
		CredentialID: id,
		RPID:         rp,
		RPIDHash:     rpHash(rp),
		RPName:       "RP " + rp,
		User:         User{ID: []byte(user), Name: user, DisplayName: "Display " + user},
		PublicKey:    residentKeys[id[0]%8],
		CredProtect:  credProtect,
		Created:      time.Unix(1700000000, int64(binary.BigEndian.Uint32(id))),
	}
}

// putResidentsBulk seeds s through PutResidents (one transaction).
func putResidentsBulk(t testing.TB, s *Store, rs []Resident) {
	t.Helper()
	if err := s.PutResidents(rs); err != nil {
		t.Fatal(err)
	}
}

// residentModel is what the store must answer: per RP, credential IDs
// newest first.
type residentModel struct {
	byRP map[string][]Resident // RP ID → newest first
}

func (m *residentModel) put(r Resident) {
	l := m.byRP[r.RPID]
	l = slices.DeleteFunc(l, func(o Resident) bool {
		return bytes.Equal(o.User.ID, r.User.ID) || bytes.Equal(o.CredentialID, r.CredentialID)
	})
	m.byRP[r.RPID] = append([]Resident{r}, l...)
}

func (m *residentModel) remove(id []byte) {
	for rp, l := range m.byRP {
		l = slices.DeleteFunc(l, func(o Resident) bool { return bytes.Equal(o.CredentialID, id) })
		if len(l) == 0 {
			delete(m.byRP, rp)
		} else {
			m.byRP[rp] = l
		}
	}
}

func (m *residentModel) count() int {
	n := 0
	for _, l := range m.byRP {
		n += len(l)
	}
	return n
}

func ids(rs []Resident) []string {
	out := make([]string, len(rs))
	for i, r := range rs {
		out[i] = fmt.Sprintf("%x", r.CredentialID[:4])
	}
	return out
}

func filterNoUV(rs []Resident) []Resident {
	return slices.DeleteFunc(slices.Clone(rs), func(r Resident) bool { return r.CredProtect > CredProtectUVOptional })
}

// listPaged walks ListResidents with a page size.
func listPaged(t testing.TB, s *Store, h [32]byte, f ResidentFilter, page int) []Resident {
	t.Helper()
	var out []Resident
	var cur Cursor
	for calls := 0; ; calls++ {
		if calls > 100000 {
			t.Fatal("ListResidents never reaches the end")
		}
		got, next, err := s.ListResidents(h, f, cur, page)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, got...)
		if len(got) < page || page <= 0 {
			return out
		}
		cur = next
	}
}

// compareModel checks every listing, count and lookup against the model.
func compareModel(t testing.TB, s *Store, m *residentModel, rng *mrand.Rand) {
	t.Helper()
	if n, err := s.ResidentCount(); err != nil || n != m.count() {
		t.Fatalf("ResidentCount %d (%v), model %d", n, err, m.count())
	}
	if n, err := s.ResidentRPCount(); err != nil || n != len(m.byRP) {
		t.Fatalf("ResidentRPCount %d (%v), model %d", n, err, len(m.byRP))
	}
	rps, err := s.ResidentRPs()
	if err != nil {
		t.Fatal(err)
	}
	var wantIDs []string
	for id := range m.byRP {
		wantIDs = append(wantIDs, id)
	}
	slices.Sort(wantIDs)
	var gotIDs []string
	for _, rp := range rps {
		gotIDs = append(gotIDs, rp.ID)
	}
	if !slices.Equal(gotIDs, wantIDs) {
		t.Fatalf("RPs %v, model %v", gotIDs, wantIDs)
	}
	for _, rp := range rps {
		want := m.byRP[rp.ID]
		if rp.Count != len(want) || rp.CountWithoutUV != len(filterNoUV(want)) || rp.Name != want[0].RPName || rp.Hash != rpHash(rp.ID) {
			t.Fatalf("RP %s: %+v; model %d credentials, %d without UV, name %q", rp.ID, rp, len(want), len(filterNoUV(want)), want[0].RPName)
		}
		one, err := s.ResidentRP(rp.Hash)
		if err != nil || one != rp {
			t.Fatalf("ResidentRP(%s) = %+v, %v; listing said %+v", rp.ID, one, err, rp)
		}
		page := []int{0, 1, 2, 3, 5, 100}[rng.IntN(6)]
		for _, f := range []ResidentFilter{AllResidents, ResidentsWithoutUV} {
			w := want
			if f == ResidentsWithoutUV {
				w = filterNoUV(want)
			}
			got := listPaged(t, s, rp.Hash, f, page)
			if !slices.Equal(ids(got), ids(w)) {
				t.Fatalf("RP %s filter %d page %d: %v, model %v", rp.ID, f, page, ids(got), ids(w))
			}
			for i := range got {
				g, w := got[i], w[i]
				if !bytes.Equal(g.User.ID, w.User.ID) || g.User.Name != w.User.Name || g.User.DisplayName != w.User.DisplayName ||
					g.CredProtect != w.CredProtect || !g.PublicKey.Equal(w.PublicKey) || !g.Created.Equal(w.Created) || g.RPName != w.RPName {
					t.Fatalf("RP %s entry %d: %+v, model %+v", rp.ID, i, g, w)
				}
			}
		}
		for _, r := range want {
			got, err := s.ResidentByUser(rp.Hash, r.User.ID)
			if err != nil || !bytes.Equal(got.CredentialID, r.CredentialID) {
				t.Fatalf("ResidentByUser(%s, %q): %v", rp.ID, r.User.ID, err)
			}
			if got, err := s.Resident(r.CredentialID); err != nil || got.RPID != rp.ID {
				t.Fatalf("Resident(%x): %v", r.CredentialID[:4], err)
			}
		}
	}
}

// TestResidentsAgainstModel runs random puts (new, replacing by user,
// replacing by ID), deletes, user updates and reopens against an
// in-memory model, and compares every listing (both filters, random page
// sizes), count and lookup after each step, and the stored indexes with
// the records.
func TestResidentsAgainstModel(t *testing.T) {
	tpm := openSimulator(t)
	dir := t.TempDir()
	s, err := Open(Config{TPM: tpm, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rng := mrand.New(mrand.NewPCG(seed, 2))
	m := &residentModel{byRP: map[string][]Resident{}}
	rpNames := []string{"a.example", "b.example", "c.example", "ssh:", "zz.example"}
	var all []Resident // every resident ever put, to pick from
	steps := 400
	if testing.Short() {
		steps = 100
	}
	for step := range steps {
		switch op := rng.IntN(10); {
		case op < 5 || len(all) == 0: // new or replacing by user
			rp := rpNames[rng.IntN(len(rpNames))]
			r := genResident(rp, fmt.Sprintf("user-%d", rng.IntN(12)), uint8(rng.IntN(4))) // 0 means 1
			r.RPName = fmt.Sprintf("%s name %d", rp, step)
			if err := s.PutResident(r); err != nil {
				t.Fatal(err)
			}
			m.put(r)
			all = append(all, r)
		case op < 6: // same credential ID again, other user and level
			old := all[rng.IntN(len(all))]
			r := genResident(old.RPID, fmt.Sprintf("user-%d", rng.IntN(12)), uint8(1+rng.IntN(3)))
			r.CredentialID = old.CredentialID
			if err := s.PutResident(r); err != nil {
				t.Fatal(err)
			}
			m.remove(r.CredentialID)
			m.put(r)
			all = append(all, r)
		case op < 9: // delete (may be gone already)
			r := all[rng.IntN(len(all))]
			err := s.DeleteResident(r.CredentialID)
			_, lookErr := s.Resident(r.CredentialID)
			if !errors.Is(lookErr, ErrNotFound) {
				t.Fatalf("step %d: deleted credential still found: %v", step, lookErr)
			}
			present := false
			for _, o := range m.byRP[r.RPID] {
				present = present || bytes.Equal(o.CredentialID, r.CredentialID)
			}
			if present != (err == nil) || (!present && !errors.Is(err, ErrNotFound)) {
				t.Fatalf("step %d: delete: %v, model had it: %v", step, err, present)
			}
			m.remove(r.CredentialID)
		default: // rename a user, or reopen
			if rng.IntN(2) == 0 {
				s.Close()
				if s, err = Open(Config{TPM: tpm, Dir: dir}); err != nil {
					t.Fatal(err)
				}
				break
			}
			l := m.byRP[rpNames[rng.IntN(len(rpNames))]]
			if len(l) == 0 {
				break
			}
			i := rng.IntN(len(l))
			u := User{ID: l[i].User.ID, Name: fmt.Sprintf("renamed %d", step)}
			if err := s.UpdateResidentUser(l[i].CredentialID, u); err != nil {
				t.Fatal(err)
			}
			l[i].User = u
		}
		compareModel(t, s, m, rng)
		if step%50 == 0 {
			checkResidentLayout(t, s)
		}
	}
	checkResidentLayout(t, s)
	// The user ID cannot change through UpdateResidentUser.
	for _, l := range m.byRP {
		if err := s.UpdateResidentUser(l[0].CredentialID, User{ID: []byte("other")}); err == nil || errors.Is(err, ErrNotFound) {
			t.Fatalf("user ID change: %v", err)
		}
		break
	}
}

// TestResidentCursorWithDeletions deletes entries around a cursor
// between pages: the walk must return every credential that remains
// exactly once, newest first, none that was deleted before the walk
// reached it, and none added after the walk began.
func TestResidentCursorWithDeletions(t *testing.T) {
	s := openStore(t, openSimulator(t), t.TempDir())
	const rp = "walk.example"
	byName := map[string]Resident{}
	for i := range 60 {
		r := genResident(rp, fmt.Sprintf("u%02d", i), uint8(1+i%2))
		if err := s.PutResident(r); err != nil {
			t.Fatal(err)
		}
		byName[r.User.Name] = r
	}
	h := rpHash(rp)
	del := func(name string) {
		t.Helper()
		if err := s.DeleteResident(byName[name].CredentialID); err != nil {
			t.Fatal(err)
		}
	}
	var got []string
	page, cur, err := s.ListResidents(h, AllResidents, nil, 5)
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range page {
		got = append(got, r.User.Name)
	}
	// The cursor's own entry, the next one, one further on, one returned
	// earlier; and a new credential, newer than the walk.
	del("u55")
	del("u54")
	del("u48")
	del("u59")
	if err := s.PutResident(genResident(rp, "late", 1)); err != nil {
		t.Fatal(err)
	}
	for pages := 1; ; pages++ {
		page, next, err := s.ListResidents(h, AllResidents, cur, 5)
		if err != nil {
			t.Fatal(err)
		}
		for _, r := range page {
			got = append(got, r.User.Name)
		}
		if len(page) < 5 {
			break
		}
		cur = next
		switch pages {
		case 2:
			del("u30") // not reached yet
			del(got[len(got)-1])
		case 4:
			del(got[len(got)-1]) // the cursor's entry again
		}
	}
	var want []string
	for i := 59; i >= 0; i-- {
		n := fmt.Sprintf("u%02d", i)
		if n != "u54" && n != "u48" && n != "u30" {
			want = append(want, n)
		}
	}
	if !slices.Equal(got, want) {
		t.Fatalf("walk returned\n%v\nwant\n%v", got, want)
	}
	// A cursor from another listing is refused, not misread.
	if _, _, err := s.ListResidents(rpHash("other.example"), AllResidents, cur, 5); err == nil {
		t.Fatal("cursor of another RP accepted")
	}
	if _, _, err := s.ListResidents(h, ResidentsWithoutUV, cur, 5); err == nil {
		t.Fatal("cursor of another filter accepted")
	}
	checkResidentLayout(t, s)
}
