package tpmstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// TestOpenInBackgroundFaultInjection is TestOpenDamagedFaultInjection
// for Config.CheckInBackground: Open checks at once only what it reads
// itself, so damage further in is found by the check it leaves running.
// Whatever CheckState refuses must then be refused by Open or by
// Checked, and every state operation must fail with the same error;
// whatever CheckState accepts, Checked accepts. Nothing crashes and the
// file never changes.
func TestOpenInBackgroundFaultInjection(t *testing.T) {
	_, db, tpm := realDB(t)
	dir := t.TempDir()
	path := filepath.Join(dir, stateFile)
	step := flipStep()
	variants := truncations(db)
	for off := 0; off < len(db); off++ {
		// Every 97th byte, and every byte of the page headers and first
		// elements, where a flip changes the structure.
		if off%step != 0 && off%4096 >= 48 {
			continue
		}
		d := bytes.Clone(db)
		d[off] ^= 1 << (off % 8)
		variants = append(variants, d)
	}
	var refused, atOpen, afterOpen int
	for i, v := range variants {
		if err := os.WriteFile(path, v, 0o600); err != nil {
			t.Fatal(err)
		}
		_, cerr := CheckState(dir)
		if cerr != nil {
			refused++
		}
		s, err := Open(Config{TPM: tpm, Dir: dir, CheckInBackground: true})
		switch {
		case err != nil:
			if cerr != nil {
				atOpen++
				if !errors.Is(err, ErrCorruptState) {
					t.Errorf("variant %d: CheckState said %v but Open said %v", i, cerr, err)
				}
			}
			if !errors.Is(err, ErrCorruptState) && !errors.Is(err, ErrForeignTPM) && !errors.Is(err, ErrStaleState) {
				t.Errorf("variant %d: Open: %v", i, err)
			}
		case cerr != nil:
			afterOpen++
			if err := s.Checked(); !errors.Is(err, ErrCorruptState) {
				t.Errorf("variant %d: CheckState said %v but the check Open left running said %v", i, cerr, err)
			}
			if _, err := s.ResidentCount(); !errors.Is(err, ErrCorruptState) {
				t.Errorf("variant %d: ResidentCount on a state found damaged: %v", i, err)
			}
			if _, _, err := s.ListResidentRPs(nil, 0); !errors.Is(err, ErrCorruptState) {
				t.Errorf("variant %d: ListResidentRPs on a state found damaged: %v", i, err)
			}
			if err := s.PutResident(genResident("new.example", "new", 1)); !errors.Is(err, ErrCorruptState) {
				t.Errorf("variant %d: PutResident on a state found damaged: %v", i, err)
			}
			s.Close()
		default:
			if err := s.Checked(); err != nil {
				t.Errorf("variant %d: CheckState accepted it, the check Open left running said %v", i, err)
			}
			s.Close()
		}
		if got, _ := os.ReadFile(path); !bytes.Equal(got, v) {
			t.Fatalf("variant %d: the store changed the file", i)
		}
	}
	t.Logf("%d damaged copies: %d refused by CheckState, of them %d by Open itself and %d by the check it left running", len(variants), refused, atOpen, afterOpen)
	if afterOpen == 0 {
		t.Error("no damage was left to the background check: the test does not exercise it")
	}
}

// residentStore opens a store holding n resident credentials of one RP
// (enough for the RP index to span pages) and returns it with the root
// page of that index.
func residentStore(t *testing.T, n int) (s *Store, dir string, idxRoot uint64) {
	t.Helper()
	dir = t.TempDir()
	s = openStore(t, openSimulator(t), dir)
	var rs []Resident
	for i := range n {
		rs = append(rs, genResident("rp.example", fmt.Sprintf("user-%04d", i), 1))
	}
	putResidentsBulk(t, s, rs)
	err := s.db.View(func(tx *bolt.Tx) error {
		idxRoot = uint64(tx.Bucket(bucketResIndex).Root())
		return nil
	})
	if err != nil || idxRoot == 0 {
		t.Fatalf("the index's root page: %d, %v", idxRoot, err)
	}
	return s, dir, idxRoot
}

// closes: Close returns (a fault must not leave it waiting for bbolt's
// locks forever).
func closes(t *testing.T, s *Store) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- s.Close() }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		t.Fatal("Close hangs after a fault")
	}
}

// TestStateDamagedWhileOpen: damage that arrives after Open's check (the
// file overwritten or truncated under the running store, as an I/O error
// under bbolt's mapping would do) fails the operation that meets it with
// ErrCorruptState naming the file, instead of a SIGBUS or SIGSEGV; every
// later operation fails the same way, nothing more is written, and Close
// returns.
func TestStateDamagedWhileOpen(t *testing.T) {
	const n = 300
	t.Run("page overwritten, then read", func(t *testing.T) {
		s, dir, root := residentStore(t, n)
		path := StatePath(dir)
		f, err := os.OpenFile(path, os.O_WRONLY, 0)
		if err != nil {
			t.Fatal(err)
		}
		_, err = f.WriteAt(make([]byte, 4096), int64(root)*4096)
		f.Close()
		if err != nil {
			t.Fatal(err)
		}
		before, _ := os.ReadFile(path)
		_, _, err = s.ListResidents(rpHash("rp.example"), AllResidents, nil, 0)
		if !errors.Is(err, ErrCorruptState) || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), fmt.Sprintf("page %d", root)) {
			t.Fatalf("listing over a zeroed index page: %v", err)
		}
		t.Logf("%v", err)
		if err := s.PutResident(genResident("rp.example", "late", 1)); !errors.Is(err, ErrCorruptState) {
			t.Fatalf("a write after the fault: %v", err)
		}
		if _, err := s.ResidentCount(); !errors.Is(err, ErrCorruptState) {
			t.Fatalf("a read after the fault: %v", err)
		}
		// What does not need the state goes on: a server-side credential.
		c, err := s.CreateCredential(rpHash("other.example"), CredentialOptions{})
		if err != nil {
			t.Fatalf("a server-side credential after the fault: %v", err)
		}
		if c, err = s.OpenCredential(rpHash("other.example"), c.ID); err != nil {
			t.Fatalf("opening it: %v", err)
		}
		if _, err := s.NextCounter(); err != nil {
			t.Fatalf("the signature counter after the fault: %v", err)
		}
		if _, err := s.Sign(c, make([]byte, 32)); err != nil {
			t.Fatalf("signing with it: %v", err)
		}
		if after, _ := os.ReadFile(path); !bytes.Equal(before, after) {
			t.Fatal("the store wrote to the damaged file")
		}
		closes(t, s)
	})
	t.Run("truncated, then written", func(t *testing.T) {
		s, dir, _ := residentStore(t, n)
		path := StatePath(dir)
		if err := os.Truncate(path, 16384); err != nil {
			t.Fatal(err)
		}
		err := s.PutResident(genResident("rp.example", "late", 1))
		if !errors.Is(err, ErrCorruptState) || !strings.Contains(err.Error(), "truncated while in use") {
			t.Fatalf("a write to the truncated file: %v", err)
		}
		t.Logf("%v", err)
		if fi, err := os.Stat(path); err != nil || fi.Size() != 16384 {
			t.Fatalf("the store wrote to the truncated file: %v, %v", fi.Size(), err)
		}
		if _, _, err := s.ListResidents(rpHash("rp.example"), AllResidents, nil, 1); !errors.Is(err, ErrCorruptState) {
			t.Fatalf("a read after it: %v", err)
		}
		closes(t, s)
	})
	t.Run("truncated, then read", func(t *testing.T) {
		s, dir, _ := residentStore(t, n)
		path := StatePath(dir)
		if err := os.Truncate(path, 16384); err != nil {
			t.Fatal(err)
		}
		_, _, err := s.ListResidents(rpHash("rp.example"), AllResidents, nil, 0)
		if !errors.Is(err, ErrCorruptState) || !strings.Contains(err.Error(), "truncated") {
			t.Fatalf("a read of the truncated file (SIGBUS without the guard): %v", err)
		}
		t.Logf("%v", err)
		if err := s.PutResident(genResident("rp.example", "late", 1)); !errors.Is(err, ErrCorruptState) {
			t.Fatalf("a write after it: %v", err)
		}
		if fi, err := os.Stat(path); err != nil || fi.Size() != 16384 {
			t.Fatalf("the store wrote to the truncated file: %v, %v", fi.Size(), err)
		}
		closes(t, s)
	})
}

// TestTreeCycleIsNeverRead: a branch page whose children are itself
// makes bbolt's cursor recurse until the Go runtime kills the process
// ("fatal error: stack overflow", which no recover catches), so no read
// may reach a page before the full check has walked the tree. With
// Config.CheckInBackground the read waits for that check and fails with
// its error.
func TestTreeCycleIsNeverRead(t *testing.T) {
	s, dir, root := residentStore(t, 300)
	tpm := s.tpm
	s.Close()
	path := StatePath(dir)
	d, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	pointBranchAtItself(t, d, root)
	if err := os.WriteFile(path, d, 0o600); err != nil {
		t.Fatal(err)
	}
	s, err = Open(Config{TPM: tpm, Dir: dir, CheckInBackground: true})
	if err != nil {
		t.Fatalf("Open reads only the root and meta buckets, which are whole: %v", err)
	}
	defer s.Close()
	_, _, err = s.ListResidents(rpHash("rp.example"), AllResidents, nil, 0)
	if !errors.Is(err, ErrCorruptState) || !strings.Contains(err.Error(), fmt.Sprintf("page %d is referred to twice", root)) {
		t.Fatalf("listing through a cycle: %v", err)
	}
	t.Logf("%v", err)
}

// TestFaultOnWholeState: a panic inside a transaction on a state whose
// structure checks out whole is not called damage (the way out offered
// for damage, reset, would lose every credential for a fault of this
// program); the store still stops using the database.
func TestFaultOnWholeState(t *testing.T) {
	s, _, _ := residentStore(t, 10)
	s.mu.Lock()
	err := s.guarded(true, func(*bolt.Tx) error { panic("a fault of the program") })
	s.mu.Unlock()
	if err == nil || errors.Is(err, ErrCorruptState) || !strings.Contains(err.Error(), "checks out whole") {
		t.Fatalf("got %v", err)
	}
	if _, err := s.ResidentCount(); err == nil {
		t.Fatal("the store went on using the database after a fault")
	}
	closes(t, s)
}

// BenchmarkCheckState measures the state checks on a state of 10 and of
// 10,000 resident credentials spread over 1 and over 1,000 RPs:
//
//	go test -run '^$' -bench CheckState -benchtime 200x ./tpmstore/
//
// open is what Open checks before it returns with
// Config.CheckInBackground (the daemon's start): the file, the header
// pages, the free-page list, the root and meta buckets. full is
// CheckState: every page in use, and the meta record through a read-only
// bbolt open; it is what runs in the background, and what the commands
// run before they open the store.
func BenchmarkCheckState(b *testing.B) {
	tpm := openSimulator(b)
	for _, rps := range []int{1, 1000} {
		for _, n := range []int{10, 10000} {
			dir := b.TempDir()
			s, err := Open(Config{TPM: tpm, Dir: dir, MaxResidents: 2 * n})
			if err != nil {
				b.Fatal(err)
			}
			var seed []Resident
			for i := range n {
				seed = append(seed, genResident(fmt.Sprintf("rp%04d.example", i%rps), fmt.Sprintf("user-%05d", i), 1))
			}
			for i := 0; i < n; i += 1000 {
				putResidentsBulk(b, s, seed[i:min(i+1000, n)])
			}
			s.Close()
			fi, err := os.Stat(StatePath(dir))
			if err != nil {
				b.Fatal(err)
			}
			for _, c := range []struct {
				name  string
				scope checkScope
			}{{"open", scopeStart}, {"full", scopeFull}} {
				b.Run(fmt.Sprintf("rps=%d/n=%d/%s", min(rps, n), n, c.name), func(b *testing.B) {
					for b.Loop() {
						if _, err := checkState(dir, c.scope); err != nil {
							b.Fatal(err)
						}
					}
					b.ReportMetric(float64(fi.Size())/(1<<20), "MiB")
				})
			}
		}
	}
}

// TestNoFreelistStateIsCheckedBeforeBboltOpens: a database whose header
// page records no free-page list (written by a bbolt with
// NoFreelistSync, such as `bbolt surgery freelist abandon`) makes
// bbolt's Open rebuild that list by walking every page of the tree (and
// commit it). So for such a file Open's start check must be the full
// walk: damage deep in the tree is refused with ErrCorruptState, with
// or without Config.CheckInBackground, instead of bbolt reading it (a
// cycle panics in bbolt's Open, a wild page id is a SIGSEGV in a
// goroutine of its own), and the file is left unchanged.
func TestNoFreelistStateIsCheckedBeforeBboltOpens(t *testing.T) {
	for _, bg := range []bool{false, true} {
		t.Run(fmt.Sprintf("CheckInBackground=%v", bg), func(t *testing.T) {
			s, dir, root := residentStore(t, 300)
			tpm := s.tpm
			s.Close()
			path := StatePath(dir)
			db, err := bolt.Open(path, 0o600, &bolt.Options{NoFreelistSync: true})
			if err != nil {
				t.Fatal(err)
			}
			err = db.Update(func(tx *bolt.Tx) error { return tx.Bucket(bucketMeta).Put(keyPINRetries, []byte{maxPINRetries}) })
			if cerr := db.Close(); err == nil {
				err = cerr
			}
			if err != nil {
				t.Fatal(err)
			}
			d, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			m, _, err := checkHeaders(d, int64(len(d)))
			if err != nil || m.freelist != noFreelist {
				t.Fatalf("the header records free-page list %d (%v), want none", m.freelist, err)
			}
			pointBranchAtItself(t, d, root)
			if err := os.WriteFile(path, d, 0o600); err != nil {
				t.Fatal(err)
			}
			s, err = func() (s *Store, err error) {
				defer func() {
					if r := recover(); r != nil {
						err = fmt.Errorf("Open panicked: %v", r)
					}
				}()
				return Open(Config{TPM: tpm, Dir: dir, CheckInBackground: bg})
			}()
			if err == nil {
				err = s.Checked()
				s.Close()
			}
			if !errors.Is(err, ErrCorruptState) || !strings.Contains(err.Error(), fmt.Sprintf("page %d is referred to twice", root)) {
				t.Fatalf("Open of a state without a free-page list and with a cycle in its tree: %v", err)
			}
			t.Logf("%v", err)
			if got, _ := os.ReadFile(path); !bytes.Equal(got, d) {
				t.Fatal("Open changed the damaged file")
			}
		})
	}
}

// pointBranchAtItself makes every child of branch page root of the
// database d be root itself: a cycle in the tree.
func pointBranchAtItself(t *testing.T, d []byte, root uint64) {
	t.Helper()
	p := d[root*4096:]
	if flags := binary.NativeEndian.Uint16(p[8:]); flags != branchPageFlag {
		t.Fatalf("the index's root page %d has type 0x%02x, not a branch: too few credentials", root, flags)
	}
	for i := range uint64(binary.NativeEndian.Uint16(p[10:])) {
		binary.NativeEndian.PutUint64(p[pageHeaderSize+i*elementSize+8:], root)
	}
}
