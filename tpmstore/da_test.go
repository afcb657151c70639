package tpmstore

import (
	"encoding/binary"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// bystander is another program's DA-protected secret in the same TPM
// (as systemd-cryptenroll's TPM2+PIN or an ssh-tpm-agent key would be):
// an NV index read with its password. It is refused once the TPM is in
// dictionary-attack lockout, and a wrong password counts as a failure.
// (An NV index needs no transient object slot.)
type bystander struct {
	tpm   transport.TPM
	index tpm2.TPMHandle
	name  tpm2.TPM2BName
}

const (
	bystanderAuth  = "bystander-pin"
	bystanderIndex = 0x01000F1D
)

func newBystander(t *testing.T, tpm transport.TPM) *bystander {
	t.Helper()
	pub := tpm2.TPMSNVPublic{
		NVIndex: bystanderIndex,
		NameAlg: tpm2.TPMAlgSHA256,
		Attributes: tpm2.TPMANV{
			AuthRead: true, AuthWrite: true, NT: tpm2.TPMNTOrdinary, NoDA: false,
		},
		DataSize: 8,
	}
	if _, err := (tpm2.NVDefineSpace{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)},
		Auth:       tpm2.TPM2BAuth{Buffer: []byte(bystanderAuth)},
		PublicInfo: tpm2.New2B(pub),
	}).Execute(tpm); err != nil {
		t.Fatalf("bystander: NV_DefineSpace: %v", err)
	}
	b := &bystander{tpm: tpm, index: bystanderIndex}
	b.name = nvName(t, pub)
	if _, err := (tpm2.NVWrite{
		AuthHandle: tpm2.AuthHandle{Handle: b.index, Name: b.name, Auth: tpm2.PasswordAuth([]byte(bystanderAuth))},
		NVIndex:    tpm2.NamedHandle{Handle: b.index, Name: b.name},
		Data:       tpm2.TPM2BMaxNVBuffer{Buffer: []byte("disk key")},
	}).Execute(tpm); err != nil {
		t.Fatalf("bystander: NV_Write: %v", err)
	}
	pub.Attributes.Written = true
	b.name = nvName(t, pub)
	return b
}

func nvName(t *testing.T, pub tpm2.TPMSNVPublic) tpm2.TPM2BName {
	t.Helper()
	n, err := tpm2.NVName(&pub)
	if err != nil {
		t.Fatal(err)
	}
	return *n
}

// unseal reads the bystander's secret with its right password.
func (b *bystander) unseal(t *testing.T) error {
	t.Helper()
	return b.unsealWith(t, bystanderAuth)
}

// unsealWith reads the bystander's secret with password pw.
func (b *bystander) unsealWith(t *testing.T, pw string) error {
	t.Helper()
	_, err := tpm2.NVRead{
		AuthHandle: tpm2.AuthHandle{Handle: b.index, Name: b.name, Auth: tpm2.PasswordAuth([]byte(pw))},
		NVIndex:    tpm2.NamedHandle{Handle: b.index, Name: b.name},
		Size:       8,
	}.Execute(b.tpm)
	return err
}

func readDA(t *testing.T, tpm transport.TPM) DAStatus {
	t.Helper()
	st, err := ReadDAStatus(tpm)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// TestPINNeverLocksTPM: with the TPM's default dictionary-attack policy
// (3 failures, one forgiven every 1000 s: swtpm and the reference
// simulator as manufactured), wrong FIDO PINs never put the TPM into
// lockout. Three wrong PINs, a restart, ten more: the store tries only
// while one more failure leaves the TPM out of lockout, then answers
// ErrTPMLockout (a *DAWaitError saying when) without trying and without
// spending a retry. Another program's DA-protected secret stays usable.
func TestPINNeverLocksTPM(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			tpm := b.openDefault(t)
			st := readDA(t, tpm)
			t.Logf("default policy: %s", st)
			if st.MaxTries != 3 || st.RecoveryTime != 1000*time.Second {
				t.Fatalf("this TPM's default policy is %d/%s, the test expects 3/1000s", st.MaxTries, st.RecoveryTime)
			}
			by := newBystander(t, tpm)
			dir := t.TempDir()
			s := openStore(t, tpm, dir)
			good, bad := pinHash("1234"), pinHash("0000")
			if err := s.SetPIN(good); err != nil {
				t.Fatal(err)
			}
			try := func(round, i int, pin [16]byte) error {
				before := readDA(t, tpm).FailedTries
				err := s.VerifyPIN(pin)
				after := readDA(t, tpm)
				t.Logf("round %d, wrong PIN %2d: failedTries %d -> %d, inLockout %v, retries %d: %v",
					round, i, before, after.FailedTries, after.InLockout, s.PINRetries(), err)
				if after.InLockout || after.FailedTries >= after.MaxTries {
					t.Fatalf("the TPM went into lockout: %s", after)
				}
				return err
			}
			// Round 1: three wrong PINs.
			for i, want := range []error{ErrPINInvalid, ErrPINInvalid, ErrTPMLockout} {
				if err := try(1, i+1, bad); !errors.Is(err, want) {
					t.Fatalf("wrong PIN %d: %v, want %v", i+1, err, want)
				}
			}
			var wait *DAWaitError
			if err := s.VerifyPIN(good); !errors.As(err, &wait) {
				t.Fatalf("right PIN at 2 of 3 failures: %v, want a *DAWaitError (not tried)", err)
			}
			if wait.Wait <= 0 || wait.Wait > 1000*time.Second {
				t.Errorf("next try in %s, want within the 1000 s recovery time", wait.Wait)
			}
			t.Logf("refused: %v", wait)
			if r := s.PINRetries(); r != 6 {
				t.Fatalf("retries %d, want 6 (two tried, the refused ones not spent)", r)
			}
			// A restart does not help: the TPM's counter is machine-wide.
			s.Close()
			s = openStore(t, tpm, dir)
			for i := range 10 {
				if err := try(2, i+1, bad); !errors.As(err, &wait) {
					t.Fatalf("round 2, wrong PIN %d: %v, want a *DAWaitError", i+1, err)
				}
			}
			if r := s.PINRetries(); r != 6 {
				t.Fatalf("retries %d after the refused tries, want 6", r)
			}
			st = readDA(t, tpm)
			if st.FailedTries != 2 || st.InLockout {
				t.Fatalf("DA state after both rounds: %s, want 2 failures and no lockout", st)
			}
			if err := by.unseal(t); err != nil {
				t.Fatalf("another program's DA-protected secret is refused: %v", err)
			}
		})
	}
}

// TestPINCTAPSequence: where the TPM allows enough failures (32, one
// forgiven every 600 s, as Windows provisions), the full CTAP 2.1 PIN
// semantics hold: three wrong PINs in a row block until a restart, a
// restart allows tries again, eight in all block for good.
func TestPINCTAPSequence(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			tpm := b.openDefault(t)
			if err := setDAParameters(tpm, 32, 600, 86400); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			s := openStore(t, tpm, dir)
			good, bad := pinHash("1234"), pinHash("0000")
			if err := s.SetPIN(good); err != nil {
				t.Fatal(err)
			}
			start := readDA(t, tpm)
			t.Logf("policy: %s", start)
			wrong := func(want error) {
				t.Helper()
				before := readDA(t, tpm).FailedTries
				err := s.VerifyPIN(bad)
				t.Logf("wrong PIN: failedTries %d -> %d, retries %d: %v", before, readDA(t, tpm).FailedTries, s.PINRetries(), err)
				if !errors.Is(err, want) {
					t.Fatalf("wrong PIN: %v, want %v", err, want)
				}
			}
			for _, want := range []error{ErrPINInvalid, ErrPINInvalid, ErrPINAuthBlocked} {
				wrong(want)
			}
			if err := s.VerifyPIN(good); !errors.Is(err, ErrPINAuthBlocked) {
				t.Fatalf("right PIN after 3 wrong: %v, want ErrPINAuthBlocked until restart", err)
			}
			s.Close()
			s = openStore(t, tpm, dir)
			for _, want := range []error{ErrPINInvalid, ErrPINInvalid, ErrPINAuthBlocked} {
				wrong(want)
			}
			s.Close()
			s = openStore(t, tpm, dir)
			wrong(ErrPINInvalid)
			wrong(ErrPINBlocked)
			if r := s.PINRetries(); r != 0 {
				t.Fatalf("retries %d after 8 wrong PINs", r)
			}
			s.Close()
			s = openStore(t, tpm, dir)
			if err := s.VerifyPIN(good); !errors.Is(err, ErrPINBlocked) {
				t.Fatalf("right PIN once blocked: %v", err)
			}
			end := readDA(t, tpm)
			if end.FailedTries != start.FailedTries+8 || end.InLockout {
				t.Fatalf("DA state %s after 8 wrong PINs from %d", end, start.FailedTries)
			}
		})
	}
}

// TestDAStatusHelpers checks the arithmetic of the guard.
func TestDAStatusHelpers(t *testing.T) {
	for _, c := range []struct {
		st           DAStatus
		safe, ctap   bool
		ever         bool
		wait         time.Duration
		safeTries    int
		relaxHasAuth bool
	}{
		{DAStatus{FailedTries: 0, MaxTries: 3, RecoveryTime: 1000 * time.Second}, true, false, true, 0, 2, false},
		{DAStatus{FailedTries: 2, MaxTries: 3, RecoveryTime: 1000 * time.Second}, false, false, true, 1000 * time.Second, 0, false},
		{DAStatus{FailedTries: 3, MaxTries: 3, RecoveryTime: 1000 * time.Second, InLockout: true}, false, false, true, 2000 * time.Second, 0, false},
		{DAStatus{FailedTries: 8, MaxTries: 32, RecoveryTime: 600 * time.Second}, true, true, true, 0, 23, false},
		{DAStatus{FailedTries: 8, MaxTries: 9, RecoveryTime: 600 * time.Second}, false, true, true, 600 * time.Second, 0, false},
		{DAStatus{FailedTries: 0, MaxTries: 1, RecoveryTime: 600 * time.Second, LockoutAuthSet: true}, false, false, false, -1, 0, true},
		{DAStatus{FailedTries: 0, MaxTries: 0, RecoveryTime: 0}, true, true, true, 0, -1, false},
	} {
		st := c.st
		if st.SafeToTry() != c.safe || st.AllowsCTAPRetries() != c.ctap || st.CanEverTry() != c.ever ||
			st.waitFor() != c.wait || st.SafeTries() != c.safeTries {
			t.Errorf("%s: safe %v ctap %v ever %v wait %s safeTries %d", st, st.SafeToTry(), st.AllowsCTAPRetries(),
				st.CanEverTry(), st.waitFor(), st.SafeTries())
		}
		if got := st.RelaxCommand(); !strings.HasPrefix(got, "tpm2_dictionarylockout --setup-parameters --max-tries=32") || strings.HasSuffix(got, " -p LOCKOUT_PASSWORD") != c.relaxHasAuth {
			t.Errorf("%s: relax command %q", st, got)
		}
	}
}

// failsBeforeUnseal is another program that fails its own DA-protected
// authorisation times times, right between the store's look at the DA
// counter and its PIN check (the one window the guard cannot close), at
// the store's first TPM2_Unseal after done is cleared.
type failsBeforeUnseal struct {
	transport.TPM
	t     *testing.T
	by    *bystander
	times int
	done  bool
}

func (f *failsBeforeUnseal) Send(b []byte) ([]byte, error) {
	if !f.done && len(b) >= 10 && tpm2.TPMCC(binary.BigEndian.Uint32(b[6:10])) == tpm2.TPMCCUnseal {
		f.done = true
		for range f.times {
			f.by.unsealWith(f.t, "not the bystander's password")
		}
	}
	return f.TPM.Send(b)
}

// restartableSWTPM is a swtpm whose process can be killed without
// TPM2_Shutdown (a power cut, a crash) and started again on its state.
type restartableSWTPM struct {
	t   *testing.T
	dir string
	cmd *exec.Cmd
	tpm transport.TPMCloser
}

func (r *restartableSWTPM) start() transport.TPM {
	r.t.Helper()
	sock := filepath.Join(r.dir, "data.sock")
	os.Remove(sock)
	r.cmd = exec.Command("swtpm", "socket", "--tpm2",
		"--server", "type=unixio,path="+sock,
		"--ctrl", "type=unixio,path="+filepath.Join(r.dir, "ctrl.sock"),
		"--flags", "not-need-init,startup-clear",
		"--tpmstate", "dir="+r.dir)
	if err := r.cmd.Start(); err != nil {
		r.t.Fatalf("start swtpm: %v", err)
	}
	for i := 0; ; i++ {
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if i > 500 {
			r.t.Fatalf("swtpm socket %s did not appear", sock)
		}
		time.Sleep(10 * time.Millisecond)
	}
	tpm, err := OpenTPM("swtpm:" + sock)
	if err != nil {
		r.t.Fatal(err)
	}
	r.tpm = tpm
	return tpm
}

// cut kills swtpm as a power cut would: no TPM2_Shutdown.
func (r *restartableSWTPM) cut() {
	r.tpm.Close()
	r.cmd.Process.Kill()
	r.cmd.Wait()
}

// TestDAGuardLimits: the guard stops at maxTries-1 failures, one short
// of lockout, and two things it cannot see can still add the last one:
// another program failing its own DA-protected authorisation between the
// guard's look and the PIN try, and a TPM that restarts without an
// orderly TPM2_Shutdown (power cut, crash) after DA-protected objects
// were used, for which the TPM itself counts one failure (TPM 2.0 Part 1,
// "Non-orderly shutdown"). Both are measured here at the reference
// policy (3 failures, 1000 s); docs/tpmstore.md names them.
func TestDAGuardLimits(t *testing.T) {
	t.Run("other-program-in-between", func(t *testing.T) {
		tpm := openSimulatorDefault(t)
		by := newBystander(t, tpm)
		f := &failsBeforeUnseal{TPM: tpm, t: t, by: by, times: 1, done: true}
		s := openStore(t, f, t.TempDir())
		if err := s.SetPIN(pinHash("1234")); err != nil {
			t.Fatal(err)
		}
		if err := s.VerifyPIN(pinHash("0000")); !errors.Is(err, ErrPINInvalid) {
			t.Fatal(err)
		}
		// 1 of 3 counted: the guard lets the next try through, and the
		// bystander's failure comes before it.
		f.done = false
		err := s.VerifyPIN(pinHash("0000"))
		st := readDA(t, tpm)
		t.Logf("wrong PIN after another program's failure in between: %v; TPM: %s", err, st)
		if !st.InLockout {
			t.Fatalf("TPM: %s, want lockout (the window the guard cannot close)", st)
		}
	})
	t.Run("unclean-TPM-restart", func(t *testing.T) {
		if _, err := exec.LookPath("swtpm"); err != nil {
			t.Skip("swtpm not on PATH")
		}
		r := &restartableSWTPM{t: t, dir: t.TempDir()}
		tpm := r.start()
		t.Cleanup(func() { r.cut() })
		dir := t.TempDir()
		s := openStore(t, tpm, dir)
		if err := s.SetPIN(pinHash("1234")); err != nil {
			t.Fatal(err)
		}
		for range 3 {
			s.VerifyPIN(pinHash("0000"))
		}
		before := readDA(t, tpm)
		if before.FailedTries != 2 || before.InLockout {
			t.Fatalf("after the guard stopped: %s, want 2 of 3", before)
		}
		s.Close()
		r.cut()
		tpm = r.start()
		after := readDA(t, tpm)
		t.Logf("guard stopped at %s; after a restart without TPM2_Shutdown: %s", before, after)
		if !after.InLockout {
			t.Fatalf("after an unclean restart: %s, want lockout", after)
		}
	})
}
