package tpmstore

import (
	"bytes"
	"errors"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	bolt "go.etcd.io/bbolt"
)

// realDB makes a state directory with resident credentials, a PIN and
// counter values, and returns its database's bytes.
func realDB(t *testing.T) (dir string, db []byte, tpm transport.TPM) {
	t.Helper()
	tpm = openSimulator(t)
	dir = t.TempDir()
	s := openStore(t, tpm, dir)
	for _, u := range []string{"alice", "bob"} {
		c, err := s.CreateCredential(rpHash("example.org"), CredentialOptions{Resident: true})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.PutResident(testResident(t, c, u, time.Unix(5, 0))); err != nil {
			t.Fatal(err)
		}
	}
	if err := s.SetPIN(pinHash("1234")); err != nil {
		t.Fatal(err)
	}
	if _, err := s.NextCounter(); err != nil {
		t.Fatal(err)
	}
	s.Close()
	db, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		t.Fatal(err)
	}
	return dir, db, tpm
}

func TestCheckStateKinds(t *testing.T) {
	_, db, _ := realDB(t)
	base := t.TempDir()
	write := func(name string, data []byte) string {
		dir := filepath.Join(base, name)
		if err := os.MkdirAll(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dir, stateFile), data, 0o600); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	notDir := filepath.Join(base, "file")
	os.WriteFile(notDir, []byte("x"), 0o600)
	dangling := filepath.Join(base, "dangling")
	os.Mkdir(dangling, 0o700)
	os.Symlink(filepath.Join(base, "nowhere"), filepath.Join(dangling, stateFile))
	bothHeaders := bytes.Clone(db)
	bothHeaders[16] ^= 1
	bothHeaders[4096+16] ^= 1
	for _, tc := range []struct {
		name, dir, want string
		exists          bool
	}{
		{"no directory", filepath.Join(base, "none"), "", false},
		{"empty directory", func() string { d := filepath.Join(base, "emptydir"); os.Mkdir(d, 0o700); return d }(), "", false},
		{"intact", write("intact", db), "", true},
		{"not a directory", notDir, "is not a directory", false},
		{"dangling symlink", dangling, "symbolic link to something that does not exist", false},
		{"0 bytes", write("zero", nil), "is empty (0 bytes)", true},
		{"truncated to 16384", write("t16384", db[:16384]), "truncated: 16384 bytes", true},
		{"truncated to 100", write("t100", db[:100]), "truncated: 100 bytes", true},
		{"truncated to 60", write("t60", db[:60]), "neither header page is valid", true},
		{"both header pages", write("headers", bothHeaders), "neither header page is valid", true},
		{"garbage", write("garbage", bytes.Repeat([]byte("not a database "), 1000)), "neither header page is valid", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			st, err := CheckState(tc.dir)
			if tc.want == "" {
				if err != nil || st.Exists != tc.exists || st.Warning != "" {
					t.Fatalf("got %+v, %v", st, err)
				}
				return
			}
			var se *StateError
			if !errors.As(err, &se) || !errors.Is(err, ErrCorruptState) || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("got %v, want ErrCorruptState saying %q", err, tc.want)
			}
			if !strings.HasPrefix(se.Path, tc.dir) {
				t.Errorf("error names %s, not a path in %s", se.Path, tc.dir)
			}
			t.Logf("%v", err)
		})
	}
}

// TestCheckStateOneHeader: bbolt keeps two header pages and uses the
// valid one with the higher transaction id. With the older one damaged
// the state is intact (a warning, and Open works); with the newer one
// damaged bbolt would silently show the state before the last commit, so
// it is refused.
func TestCheckStateOneHeader(t *testing.T) {
	dir, db, tpm := realDB(t)
	tx0, tx1 := rawTxid(db, 0), rawTxid(db, 4096)
	older, newer := 0, 4096
	if tx0 > tx1 {
		older, newer = 4096, 0
	}
	t.Logf("header pages: txid %d at 0, %d at 4096", tx0, tx1)
	for _, tc := range []struct {
		off  int
		want string
	}{{older, ""}, {newer, "newer header page"}} {
		d := bytes.Clone(db)
		d[tc.off+16+8] ^= 0x40 // the page size field: the checksum no longer matches
		if err := os.WriteFile(filepath.Join(dir, stateFile), d, 0o600); err != nil {
			t.Fatal(err)
		}
		st, err := CheckState(dir)
		if tc.want == "" {
			if err != nil || !strings.Contains(st.Warning, "older header page") {
				t.Fatalf("older page damaged: %+v, %v", st, err)
			}
			s, err := Open(Config{TPM: tpm, Dir: dir})
			if err != nil {
				t.Fatalf("Open with the older header page damaged: %v", err)
			}
			if !s.PINIsSet() {
				t.Error("the PIN set in the last transaction is missing")
			}
			s.Close()
			t.Logf("older page (offset %d): %s", tc.off, st.Warning)
			continue
		}
		if !errors.Is(err, ErrCorruptState) || !strings.Contains(err.Error(), tc.want) {
			t.Fatalf("newer page damaged: %+v, %v", st, err)
		}
		t.Logf("newer page (offset %d): %v", tc.off, err)
	}
}

func TestCheckStateInUse(t *testing.T) {
	dir, _, tpm := realDB(t)
	db, err := bolt.Open(filepath.Join(dir, stateFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	st, err := CheckState(dir)
	if err != nil || !st.InUse {
		t.Fatalf("got %+v, %v; want InUse", st, err)
	}
	start := time.Now()
	_, err = Open(Config{TPM: tpm, Dir: dir})
	if !errors.Is(err, ErrStateInUse) {
		t.Fatalf("Open: %v, want ErrStateInUse", err)
	}
	if d := time.Since(start); d < time.Second {
		t.Errorf("Open gave up after %v, before its 2 s wait", d)
	}
	if _, err := ReadUsage(dir); !errors.Is(err, ErrStateInUse) || !strings.Contains(err.Error(), StatePath(dir)) {
		t.Fatalf("ReadUsage: %v, want ErrStateInUse naming %s", err, StatePath(dir))
	}
}

// TestOpenDamagedFaultInjection: Open on copies of a real database,
// truncated at every page and bit-flipped at many offsets, never
// crashes, never changes the file, and fails with ErrCorruptState (or
// ErrForeignTPM) whenever CheckState refused.
func TestOpenDamagedFaultInjection(t *testing.T) {
	_, db, tpm := realDB(t)
	dir := t.TempDir()
	path := filepath.Join(dir, stateFile)
	step := flipStep()
	variants := truncations(db)
	for off := 0; off < len(db); off += step {
		d := bytes.Clone(db)
		d[off] ^= 1 << (off % 8)
		variants = append(variants, d)
	}
	refused := 0
	for i, v := range variants {
		if err := os.WriteFile(path, v, 0o600); err != nil {
			t.Fatal(err)
		}
		_, cerr := CheckState(dir)
		s, err := Open(Config{TPM: tpm, Dir: dir})
		if err == nil {
			s.Close()
		}
		if cerr != nil {
			refused++
			if !errors.Is(err, ErrCorruptState) {
				t.Errorf("variant %d: CheckState said %v but Open said %v", i, cerr, err)
			}
		}
		if err != nil && !errors.Is(err, ErrCorruptState) && !errors.Is(err, ErrForeignTPM) && !errors.Is(err, ErrStaleState) {
			t.Errorf("variant %d: Open: %v", i, err)
		}
		if got, _ := os.ReadFile(path); !bytes.Equal(got, v) {
			t.Fatalf("variant %d: Open changed the file", i)
		}
	}
	t.Logf("%d damaged copies: %d refused by CheckState", len(variants), refused)
}

// TestFirstOpenLeavesNoEmptyFile: the database is created whole, under a
// temporary name, so no crash can leave a 0-byte state.db behind; a
// leftover temporary file does not stop the next first start.
func TestFirstOpenLeavesNoEmptyFile(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, stateFile+".new"), []byte("half"), 0o600); err != nil {
		t.Fatal(err)
	}
	s := openStore(t, openSimulator(t), dir)
	s.Close()
	if _, err := os.Stat(filepath.Join(dir, stateFile+".new")); !os.IsNotExist(err) {
		t.Errorf("temporary file left: %v", err)
	}
	if st, err := CheckState(dir); err != nil || !st.Exists {
		t.Fatalf("after the first open: %+v, %v", st, err)
	}
}

// TestDamagedFingerprintIsNotForeign: a damaged record of the TPM's
// storage key is reported as damage, not as "another TPM", because the
// state's keys still load in this TPM.
func TestDamagedFingerprintIsNotForeign(t *testing.T) {
	tpm, dir, path := closedState(t)
	bdb, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		fp := bytes.Clone(m.Get(keySRK))
		fp[3] ^= 0x08
		return m.Put(keySRK, fp)
	})
	bdb.Close()
	if err != nil {
		t.Fatal(err)
	}
	_, err = Open(Config{TPM: tpm, Dir: dir})
	if !errors.Is(err, ErrCorruptState) || errors.Is(err, ErrForeignTPM) {
		t.Fatalf("got %v, want ErrCorruptState", err)
	}
	t.Logf("%v", err)
}

func TestDiscardState(t *testing.T) {
	dir, _, _ := realDB(t)
	db, err := bolt.Open(filepath.Join(dir, stateFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	if err := DiscardState(dir); !errors.Is(err, ErrStateInUse) {
		t.Fatalf("while held: %v, want ErrStateInUse", err)
	}
	db.Close()
	if err := DiscardState(dir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(filepath.Join(dir, stateFile)); !os.IsNotExist(err) {
		t.Fatalf("state.db still there: %v", err)
	}
	notDir := filepath.Join(t.TempDir(), "f")
	os.WriteFile(notDir, nil, 0o600)
	if err := DiscardState(notDir); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Lstat(notDir); !os.IsNotExist(err) {
		t.Fatal("the file in place of the directory is still there")
	}
}

// TestDiscardStateTPM: discarding unusable state also removes the TPM
// objects it recorded, and never those of another store in the same TPM,
// even when the damaged record names their handles.
func TestDiscardStateTPM(t *testing.T) {
	tpm := openSimulator(t)
	a, b := t.TempDir(), t.TempDir()
	sa := openStore(t, tpm, a)
	anchorA, counterA := sa.anchor.handle, sa.counterIdx.handle
	sa.Close()
	sb := openStore(t, tpm, b)
	anchorB, counterB := sb.anchor.handle, sb.counterIdx.handle
	sb.Close()
	if anchorA == anchorB || counterA == counterB {
		t.Fatalf("two stores share handles: %x %x", anchorA, counterA)
	}
	probe := &Store{tpm: tpm, log: slog.New(slog.DiscardHandler)}
	present := func(anchor, counter tpm2.TPMHandle) (bool, bool) {
		p, _, _, err := probe.ownedAnchorAt(anchor)
		if err != nil {
			t.Fatal(err)
		}
		_, nerr := tpm2.NVReadPublic{NVIndex: counter}.Execute(tpm)
		return p, nerr == nil
	}
	// A's record altered to name B's objects: nothing of B's may go.
	bdb, err := bolt.Open(filepath.Join(a, stateFile), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = bdb.Update(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		if err := m.Put(keyAnchorHandle, be32(uint32(anchorB))); err != nil {
			return err
		}
		return m.Put(keyCtrIndex, be32(uint32(counterB)))
	})
	bdb.Close()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := DiscardStateTPM(Config{TPM: tpm, Dir: a}); err != nil {
		t.Fatal(err)
	}
	if pa, pc := present(anchorB, counterB); !pa || !pc {
		t.Fatalf("another store's objects were removed: anchor %v counter %v", pa, pc)
	}
	if s, err := Open(Config{TPM: tpm, Dir: b}); err != nil {
		t.Fatalf("the other store no longer opens: %v", err)
	} else {
		s.Close()
	}
	// B's own record: its objects go with it.
	note, err := DiscardStateTPM(Config{TPM: tpm, Dir: b})
	if err != nil || note != "" {
		t.Fatalf("discard: %v (%s)", err, note)
	}
	if pa, pc := present(anchorB, counterB); pa || pc {
		t.Fatalf("the discarded store's objects are still in the TPM: anchor %v counter %v", pa, pc)
	}
	if _, err := os.Stat(filepath.Join(b, stateFile)); !os.IsNotExist(err) {
		t.Fatal("state.db still there")
	}
	// A truncated file cannot name its objects: the note says so.
	c := t.TempDir()
	sc := openStore(t, tpm, c)
	sc.Close()
	raw, _ := os.ReadFile(filepath.Join(c, stateFile))
	os.WriteFile(filepath.Join(c, stateFile), raw[:8192], 0o600)
	note, err = DiscardStateTPM(Config{TPM: tpm, Dir: c})
	if err != nil || !strings.Contains(note, "stay in the TPM") {
		t.Fatalf("truncated: %v, note %q", err, note)
	}
}

// truncations are db cut at every page boundary and one byte past it.
func truncations(db []byte) [][]byte {
	var v [][]byte
	for n := 0; n < len(db); n += 4096 {
		v = append(v, db[:n], db[:n+1])
	}
	return v
}

// flipStep is how many bytes apart the fault-injection tests flip a bit:
// every 97th, or every 997th with -short.
func flipStep() int {
	if testing.Short() {
		return 997
	}
	return 97
}
