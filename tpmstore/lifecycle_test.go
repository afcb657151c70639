package tpmstore

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
)

func pinHash(pin string) [16]byte {
	h := sha256.Sum256([]byte(pin))
	return [16]byte(h[:16])
}

func TestResetKillsOldIDs(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			s := openStore(t, b.open(t), t.TempDir())
			rp := rpHash("example.org")
			c := residentAndPIN(t, s, rp, CredentialOptions{})
			c1, _ := s.NextCounter()
			if err := s.Reset(); err != nil {
				t.Fatalf("Reset: %v", err)
			}
			checkWiped(t, s, rp, "after reset", c)
			if c2, _ := s.NextCounter(); c2 <= c1 {
				t.Fatalf("counter went from %d to %d across reset", c1, c2)
			}
			// New credentials work after reset.
			c3, err := s.CreateCredential(rp, CredentialOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.OpenCredential(rp, c3.ID); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestPIN(t *testing.T) {
	eachBackend(t, func(t *testing.T, tpm transport.TPM, dir string, s *Store) {
		good, bad := pinHash("1234"), pinHash("0000")
		if err := s.VerifyPIN(good); !errors.Is(err, ErrPINNotSet) {
			t.Fatalf("no PIN: err = %v", err)
		}
		if err := s.SetPIN(good); err != nil {
			t.Fatal(err)
		}
		if err := s.SetPIN(good); !errors.Is(err, ErrPINAlreadySet) {
			t.Fatalf("second SetPIN: %v", err)
		}
		if err := s.VerifyPIN(good); err != nil {
			t.Fatalf("right PIN: %v", err)
		}
		// Wrong PIN decrements; 3 in a row block until reopen.
		for i, want := range []error{ErrPINInvalid, ErrPINInvalid, ErrPINAuthBlocked} {
			if err := s.VerifyPIN(bad); !errors.Is(err, want) {
				t.Fatalf("wrong PIN %d: err = %v, want %v", i+1, err, want)
			}
			if r := s.PINRetries(); r != 8-(i+1) {
				t.Fatalf("retries after %d wrong: %d", i+1, r)
			}
		}
		if err := s.VerifyPIN(good); !errors.Is(err, ErrPINAuthBlocked) {
			t.Fatalf("right PIN while auth-blocked: %v", err)
		}
		if r := s.PINRetries(); r != 5 {
			t.Fatalf("blocked attempt consumed a retry: %d", r)
		}
		s.Close()
		// Reopen: the PIN and the retry count survive.
		s = openStore(t, tpm, dir)
		if !s.PINIsSet() || s.PINRetries() != 5 {
			t.Fatalf("after reopen: set=%v retries=%d", s.PINIsSet(), s.PINRetries())
		}
		if err := s.VerifyPIN(good); err != nil {
			t.Fatalf("right PIN after reopen: %v", err)
		}
		if r := s.PINRetries(); r != 8 {
			t.Fatalf("retries not restored on success: %d", r)
		}
		// ChangePIN verifies the current PIN.
		if err := s.ChangePIN(bad, pinHash("5678")); !errors.Is(err, ErrPINInvalid) {
			t.Fatalf("ChangePIN with wrong current: %v", err)
		}
		if err := s.ChangePIN(good, pinHash("5678")); err != nil {
			t.Fatalf("ChangePIN: %v", err)
		}
		if err := s.VerifyPIN(good); !errors.Is(err, ErrPINInvalid) {
			t.Fatalf("old PIN after change: %v", err)
		}
		if err := s.VerifyPIN(pinHash("5678")); err != nil {
			t.Fatalf("new PIN: %v", err)
		}
		// 8 wrong in total (with reopens in between) block for good.
		var err error
		for i := 0; i < 8; i++ {
			if i%3 == 0 {
				s.Close()
				s = openStore(t, tpm, dir)
			}
			err = s.VerifyPIN(bad)
		}
		if !errors.Is(err, ErrPINBlocked) || s.PINRetries() != 0 {
			t.Fatalf("after 8 wrong: err = %v retries = %d", err, s.PINRetries())
		}
		s.Close()
		s = openStore(t, tpm, dir)
		if err := s.VerifyPIN(pinHash("5678")); !errors.Is(err, ErrPINBlocked) {
			t.Fatalf("right PIN when blocked: %v", err)
		}
	})
}

// TestPINLockoutIsNotWrongPIN: when the TPM is in lockout although the
// guard saw room (another program failed in between), the store gets
// TPM_RC_LOCKOUT: that is ErrTPMLockout with the wait, never a wrong
// PIN, and the retry is given back.
func TestPINLockoutIsNotWrongPIN(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			tpm := b.openDefault(t) // 3 failures, 1000 s
			by := newBystander(t, tpm)
			l := &failsBeforeUnseal{TPM: tpm, t: t, by: by, times: 3} // until lockout
			s := openStore(t, l, t.TempDir())
			if err := s.SetPIN(pinHash("1234")); err != nil {
				t.Fatal(err)
			}
			before := s.PINRetries()
			err := s.VerifyPIN(pinHash("1234"))
			var wait *DAWaitError
			if !errors.Is(err, ErrTPMLockout) || errors.Is(err, ErrPINInvalid) || !errors.As(err, &wait) {
				t.Fatalf("TPM in lockout: err = %v, want a *DAWaitError (ErrTPMLockout)", err)
			}
			if !wait.DA.InLockout || wait.Wait <= 0 {
				t.Fatalf("wait %+v: want the lockout and a time", wait)
			}
			t.Logf("%v", err)
			if s.PINRetries() != before {
				t.Fatalf("lockout consumed a retry: %d -> %d", before, s.PINRetries())
			}
		})
	}
}

func TestForeignTPM(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			dir := t.TempDir()
			tpm := b.open(t)
			s := openStore(t, tpm, dir)
			c, err := s.CreateCredential(rpHash("a"), CredentialOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.PutResident(testResident(t, c, "u", time.Unix(5, 0))); err != nil {
				t.Fatal(err)
			}
			s.Close()
			tpm.Close()
			before := snapshotDir(t, dir)
			other := b.open(t) // another machine
			_, err = Open(Config{TPM: other, Dir: dir})
			if !errors.Is(err, ErrForeignTPM) {
				t.Fatalf("Open with another TPM: err = %v, want ErrForeignTPM", err)
			}
			t.Logf("error text: %v", err)
			if after := snapshotDir(t, dir); !equalSnapshots(before, after) {
				t.Fatal("state directory changed by a failed foreign open")
			}
		})
	}
}

func snapshotDir(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	m := map[string][]byte{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		m[p] = b
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return m
}

func equalSnapshots(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !bytes.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

func TestCorruptState(t *testing.T) {
	tpm, dir, path := closedState(t)
	garbage := bytes.Repeat([]byte("not a database "), 1000)
	if err := os.WriteFile(path, garbage, 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Open(Config{TPM: tpm, Dir: dir})
	if !errors.Is(err, ErrCorruptState) {
		t.Fatalf("garbage state: err = %v, want ErrCorruptState", err)
	}
	if b, _ := os.ReadFile(path); !bytes.Equal(b, garbage) {
		t.Fatal("corrupt state file was modified")
	}
}

func TestModes(t *testing.T) {
	tpm := openSimulator(t)
	dir := filepath.Join(t.TempDir(), "state")
	s := openStore(t, tpm, dir)
	defer s.Close()
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o700 {
		t.Fatalf("dir mode %v", fi.Mode().Perm())
	}
	entries, _ := os.ReadDir(dir)
	if len(entries) == 0 {
		t.Fatal("no state files")
	}
	for _, e := range entries {
		fi, _ := e.Info()
		if fi.Mode().Perm() != 0o600 {
			t.Fatalf("%s mode %v", e.Name(), fi.Mode().Perm())
		}
	}
}

// residentAndPIN makes a resident credential (opts, made resident) for
// rp, stores alice's record for it, and sets the PIN 1234.
func residentAndPIN(t testing.TB, s *Store, rp [32]byte, opts CredentialOptions) *Credential {
	t.Helper()
	opts.Resident = true
	c, err := s.CreateCredential(rp, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.PutResident(testResident(t, c, "alice", time.Unix(1, 0))); err != nil {
		t.Fatal(err)
	}
	if err := s.SetPIN(pinHash("1234")); err != nil {
		t.Fatal(err)
	}
	return c
}

// checkWiped checks what a reset leaves: none of the old credential IDs
// opens, no resident credential, no PIN and all 8 retries.
func checkWiped(t testing.TB, s *Store, rp [32]byte, when string, old ...*Credential) {
	t.Helper()
	for _, c := range old {
		if _, err := s.OpenCredential(rp, c.ID); !errors.Is(err, ErrCredentialInvalid) {
			t.Fatalf("old credential ID %s: %v, want ErrCredentialInvalid", when, err)
		}
	}
	if n, _ := s.ResidentCount(); n != 0 {
		t.Fatalf("%d residents %s", n, when)
	}
	if s.PINIsSet() || s.PINRetries() != 8 {
		t.Fatalf("PIN %s: set=%v retries=%d", when, s.PINIsSet(), s.PINRetries())
	}
}

func testResident(t testing.TB, c *Credential, user string, created time.Time) Resident {
	t.Helper()
	return Resident{
		CredentialID: c.ID,
		RPID:         "example.org",
		RPIDHash:     c.RPIDHash,
		RPName:       "Example",
		User:         User{ID: []byte("id-" + user), Name: user, DisplayName: "User " + user},
		PublicKey:    c.PublicKey,
		CredProtect:  1,
		Created:      created,
	}
}

// fakeResident is genResident with credProtect 2 and a key of its own,
// so that a round trip that mixed up records shows.
func fakeResident(t testing.TB, rp string, user string) Resident {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	r := genResident(rp, user, 2)
	r.PublicKey = &k.PublicKey
	return r
}

func TestResidents(t *testing.T) {
	tpm := openSimulator(t)
	dir := t.TempDir()
	s, err := Open(Config{TPM: tpm, Dir: dir, MaxResidents: 4})
	if err != nil {
		t.Fatal(err)
	}
	defer func() { s.Close() }()
	a1, a2, b1 := fakeResident(t, "a.example", "u1"), fakeResident(t, "a.example", "u2"), fakeResident(t, "b.example", "u1")
	for _, r := range []Resident{a1, a2, b1} {
		if err := s.PutResident(r); err != nil {
			t.Fatal(err)
		}
	}
	list, err := s.Residents(rpHash("a.example"))
	if err != nil {
		t.Fatal(err)
	}
	if len(list) != 2 || !bytes.Equal(list[0].CredentialID, a2.CredentialID) || !bytes.Equal(list[1].CredentialID, a1.CredentialID) {
		t.Fatalf("list order wrong: %d entries", len(list))
	}
	if !list[1].PublicKey.Equal(a1.PublicKey) || list[1].User.Name != "u1" || list[1].CredProtect != 2 || !list[1].Created.Equal(a1.Created) {
		t.Fatalf("round trip lost fields: %+v", list[1])
	}
	// Replace: same RP + user ID, new credential; it becomes the newest.
	a1b := fakeResident(t, "a.example", "u1")
	if err := s.PutResident(a1b); err != nil {
		t.Fatal(err)
	}
	list, _ = s.Residents(rpHash("a.example"))
	if len(list) != 2 || !bytes.Equal(list[0].CredentialID, a1b.CredentialID) {
		t.Fatalf("replace: %d entries", len(list))
	}
	if n, _ := s.ResidentCount(); n != 3 {
		t.Fatalf("count %d, want 3", n)
	}
	rps, err := s.ResidentRPs()
	if err != nil {
		t.Fatal(err)
	}
	if len(rps) != 2 || rps[0].ID != "a.example" || rps[0].Count != 2 || rps[1].Count != 1 || rps[0].Hash != rpHash("a.example") {
		t.Fatalf("RPs: %+v", rps)
	}
	if err := s.UpdateResidentUser(b1.CredentialID, User{ID: b1.User.ID, Name: "new", DisplayName: "New"}); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteResident(a2.CredentialID); err != nil {
		t.Fatal(err)
	}
	if err := s.DeleteResident(a2.CredentialID); !errors.Is(err, ErrNotFound) {
		t.Fatalf("second delete: %v", err)
	}
	if err := s.UpdateResidentUser([]byte("nope"), User{}); !errors.Is(err, ErrNotFound) {
		t.Fatalf("update missing: %v", err)
	}
	// Full.
	s.PutResident(fakeResident(t, "c.example", "x"))
	s.PutResident(fakeResident(t, "d.example", "x"))
	if err := s.PutResident(fakeResident(t, "e.example", "x")); !errors.Is(err, ErrStoreFull) {
		t.Fatalf("fifth resident with max 4: %v", err)
	}
	// Durable across reopen.
	s.Close()
	s, err = Open(Config{TPM: tpm, Dir: dir, MaxResidents: 4})
	if err != nil {
		t.Fatal(err)
	}
	list, _ = s.Residents(rpHash("b.example"))
	if len(list) != 1 || list[0].User.Name != "new" {
		t.Fatalf("after reopen: %+v", list)
	}
	if n, _ := s.ResidentCount(); n != 4 {
		t.Fatalf("count after reopen %d", n)
	}
}

func TestCounterAcrossReopen(t *testing.T) {
	tpm := openSimulator(t)
	dir := t.TempDir()
	var last uint32
	for round := 0; round < 3; round++ {
		s := openStore(t, tpm, dir)
		for i := 0; i < 300; i++ {
			last = nextCounterAbove(t, s, last, fmt.Sprintf("round %d", round))
		}
		s.Close()
	}
}

func TestClosedStore(t *testing.T) {
	tpm := openSimulator(t)
	s := openStore(t, tpm, t.TempDir())
	s.Close()
	if _, err := s.NextCounter(); err == nil {
		t.Fatal("NextCounter on a closed store succeeded")
	}
	if _, err := s.CreateCredential(rpHash("x"), CredentialOptions{}); err == nil {
		t.Fatal("CreateCredential on a closed store succeeded")
	}
}
