//go:build cgo

package main

import (
	"bytes"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tpm-fido/tpm-fido/test/load/inproc"
	"github.com/tpm-fido/tpm-fido/tpmstore"
	"github.com/tpm-fido/tpm-fido/tpmstore/tpmtest"
)

// TestPinStatusAndDA: `pin status` shows the TPM's dictionary-attack
// state and when the next PIN try is possible; `pin change` says so
// before asking for a PIN once one more failure could lock the TPM.
func TestPinStatusAndDA(t *testing.T) {
	dir, tpm := withSimulator(t) // the simulator's default: 3 failures, 1000 s
	sd := "--state-dir=" + dir
	withStdin(t, "1234\n1234\n")
	if _, e, rc := runCmd(t, "pin", "set", sd); rc != 0 {
		t.Fatalf("pin set: %s", e)
	}
	out, e, rc := runCmd(t, "pin", "status", sd)
	t.Logf("pin status:\n%s", out)
	for _, want := range []string{"PIN: set, 8 retries left", "0 of 3 failures counted, one forgiven every 16m40s", "next PIN try: now (2 wrong PIN(s)", "fewer than the 8 PIN tries CTAP allows"} {
		if rc != 0 || !strings.Contains(out, want) {
			t.Errorf("pin status lacks %q (rc %d, %s)", want, rc, e)
		}
	}
	for _, want := range []string{"wrong PIN (7 retries left)", "wrong PIN (6 retries left)"} {
		withStdin(t, "9999\n5678\n5678\n")
		if _, e, rc := runCmd(t, "pin", "change", sd); rc == 0 || !strings.Contains(e, want) {
			t.Fatalf("change with a wrong PIN: rc %d %q, want %q", rc, e, want)
		}
	}
	withStdin(t, "1234\n5678\n5678\n")
	_, e, rc = runCmd(t, "pin", "change", sd)
	t.Logf("pin change at 2 of 3: %s", e)
	if rc == 0 || !strings.Contains(e, "the PIN cannot be tried now: in at most 16m40s") {
		t.Fatalf("pin change at 2 of 3 failures: rc %d %q", rc, e)
	}
	out, _, _ = runCmd(t, "pin", "status", sd)
	t.Logf("pin status:\n%s", out)
	for _, want := range []string{"PIN: set, 6 retries left", "2 of 3 failures counted", "next PIN try: in at most 16m40s", "not in lockout"} {
		if !strings.Contains(out, want) {
			t.Errorf("pin status lacks %q:\n%s", want, out)
		}
	}
	st, err := tpmstore.ReadDAStatus(tpm)
	if err != nil || st.FailedTries != 2 || st.InLockout {
		t.Fatalf("TPM DA state %s, %v", st, err)
	}
	c := daCheck(st)
	if c.status != checkWarn || !strings.Contains(c.fix, "tpm2_dictionarylockout --setup-parameters --max-tries=32 --recovery-time=600 --lockout-recovery-time=1000") {
		t.Errorf("doctor at 2 of 3: %+v", c)
	}
}

// TestDoctorDAPolicy: doctor warns about a policy too strict for CTAP's
// eight PIN tries and prints the exact tpm2-tools command that relaxes
// it; running that command on a swtpm gives a policy doctor accepts.
// With a PIN set and the TPM's lockout password empty, doctor warns
// that the TPM limits no one's PIN guesses and prints the command that
// sets one; after it, the relax command doctor prints carries -p, and
// works with the password put in.
func TestDoctorDAPolicy(t *testing.T) {
	tool, err := exec.LookPath("tpm2_dictionarylockout")
	if err != nil {
		t.Skip("tpm2-tools not installed (tpm2_dictionarylockout)")
	}
	changeauth, err := exec.LookPath("tpm2_changeauth")
	if err != nil {
		t.Skip("tpm2-tools not installed (tpm2_changeauth)")
	}
	old := openTPM
	openTPM = func(spec string) (transport.TPMCloser, error) { return tpmstore.OpenTPM(spec) }
	t.Cleanup(func() { openTPM = old })
	startSwtpm := func(t *testing.T) (doctorEnv, *inproc.Swtpm) {
		sw := inproc.SwtpmOrSkip(t)
		env := fakeSys(t, "G:uaccess\n")
		env.tpm = sw.Spec()
		env.tpmTimeout = 30e9
		return env, sw
	}
	// runFix runs the first line of a fix against the swtpm, with the
	// lockout password in place of its placeholder.
	runFix := func(t *testing.T, sw *inproc.Swtpm, fix, tool, password string) {
		t.Helper()
		cmdline := strings.Split(fix, "\n")[0]
		cmdline, _, _ = strings.Cut(cmdline, "#")
		args := strings.Fields(cmdline)
		if args[0] != filepath.Base(tool) {
			t.Fatalf("fix %q, want %s", cmdline, tool)
		}
		for i, a := range args {
			if a == tpmstore.LockoutPasswordPlaceholder {
				args[i] = password
			}
		}
		cmd := exec.Command(tool, args[1:]...)
		cmd.Env = append(os.Environ(), "TPM2TOOLS_TCTI=swtpm:path="+sw.Sock)
		if out, err := cmd.CombinedOutput(); err != nil {
			t.Fatalf("%s: %v\n%s", cmdline, err, out)
		}
		t.Logf("ran %q", cmdline)
	}

	t.Run("no PIN", func(t *testing.T) {
		env, sw := startSwtpm(t)
		c := findCheck(env.checkTPM(), "tpm-da")
		t.Logf("doctor: %s\n  fix: %s", c.detail, c.fix)
		if c.status != checkWarn || !strings.Contains(c.detail, "gets 2 tries per 16m40s instead of CTAP's 8") ||
			strings.Contains(strings.Split(c.fix, "\n")[0], " -p ") {
			t.Fatalf("swtpm's default policy: %+v", c)
		}
		if l := findCheck(env.checkTPM(), "lockout"); l.status != checkOK || !strings.Contains(l.detail, "matters once a FIDO PIN is set") {
			t.Fatalf("no PIN set, no lockout password: %+v", l)
		}
		runFix(t, sw, c.fix, tool, "")
		c = findCheck(env.checkTPM(), "tpm-da")
		t.Logf("after it: %s", c.detail)
		if c.status != checkOK || !strings.Contains(c.detail, "0 of 32 failures counted, one forgiven every 10m0s") {
			t.Fatalf("after the fix: %+v", c)
		}
	})

	t.Run("PIN set", func(t *testing.T) {
		env, sw := startSwtpm(t)
		tpm, err := tpmstore.OpenTPM(sw.Spec())
		if err != nil {
			t.Fatal(err)
		}
		s, err := tpmstore.Open(tpmstore.Config{TPM: tpm, Dir: env.stateDir})
		if err != nil {
			t.Fatal(err)
		}
		if err := s.SetPIN([16]byte{1}); err != nil {
			t.Fatal(err)
		}
		s.Close()
		tpm.Close()

		l := findCheck(env.checkTPM(), "lockout")
		t.Logf("doctor: %s\n  fix: %s", l.detail, l.fix)
		if l.status != checkWarn || !strings.Contains(l.detail, "a FIDO PIN is set and the TPM's lockout password is empty") ||
			!strings.Contains(l.fix, "keep it safe") || !strings.Contains(l.fix, "do that first") {
			t.Fatalf("PIN set, no lockout password: %+v", l)
		}
		const password = "correct horse battery staple"
		runFix(t, sw, l.fix, changeauth, password)
		if l := findCheck(env.checkTPM(), "lockout"); l.status != checkOK || !strings.Contains(l.detail, "lockout password is set") {
			t.Fatalf("after setting the lockout password: %+v", l)
		}
		c := findCheck(env.checkTPM(), "tpm-da")
		t.Logf("doctor: %s\n  fix: %s", c.detail, c.fix)
		if c.status != checkWarn || !strings.HasSuffix(strings.Split(c.fix, "\n")[0], " -p "+tpmstore.LockoutPasswordPlaceholder) {
			t.Fatalf("strict policy with a lockout password: %+v", c)
		}
		runFix(t, sw, c.fix, tool, password)
		c = findCheck(env.checkTPM(), "tpm-da")
		t.Logf("after it: %s", c.detail)
		if c.status != checkOK || !strings.Contains(c.detail, "0 of 32 failures counted, one forgiven every 10m0s") {
			t.Fatalf("after the fix: %+v", c)
		}
	})
}

// TestPinSetAdvisesLockoutAuth: `pin set` and `pin change` print the
// one-line advice to set a lockout password while the TPM has none, and
// not once it has one; doctor, with the PIN set, warns likewise.
func TestPinSetAdvisesLockoutAuth(t *testing.T) {
	dir, tpm := withSimulator(t)
	sd := "--state-dir=" + dir
	withStdin(t, "1234\n1234\n")
	out, e, rc := runCmd(t, "pin", "set", sd)
	t.Logf("pin set: %s", out)
	if rc != 0 || !strings.Contains(out, lockoutAdvice) || !strings.Contains(out, "tpm2_changeauth -c lockout LOCKOUT_PASSWORD") {
		t.Fatalf("pin set without a lockout password: rc %d %q %q", rc, out, e)
	}
	withStdin(t, "1234\n5678\n5678\n")
	if out, e, rc := runCmd(t, "pin", "change", sd); rc != 0 || !strings.Contains(out, lockoutAdvice) {
		t.Fatalf("pin change without a lockout password: rc %d %q %q", rc, out, e)
	}
	env := fakeSys(t, "G:uaccess\n")
	env.tpm, env.stateDir, env.tpmTimeout = "swtpm:/simulated", dir, 30e9
	if l := findCheck(env.checkTPM(), "lockout"); l.status != checkWarn || !strings.HasPrefix(l.fix, "tpm2_changeauth -c lockout LOCKOUT_PASSWORD") {
		t.Fatalf("doctor with a PIN set and no lockout password: %+v", l)
	}
	if _, err := (tpm2.HierarchyChangeAuth{
		AuthHandle: tpm2.AuthHandle{Handle: tpm2.TPMRHLockout, Auth: tpm2.PasswordAuth(nil)},
		NewAuth:    tpm2.TPM2BAuth{Buffer: []byte("lockout secret")},
	}).Execute(tpm); err != nil {
		t.Fatal(err)
	}
	withStdin(t, "5678\n1234\n1234\n")
	out, e, rc = runCmd(t, "pin", "change", sd)
	if rc != 0 || strings.Contains(out, "lockout") {
		t.Fatalf("pin change with a lockout password: rc %d %q %q", rc, out, e)
	}
	if l := findCheck(env.checkTPM(), "lockout"); l.status != checkOK {
		t.Fatalf("doctor with a lockout password: %+v", l)
	}
}

// TestDoctorDANoTry: a TPM that locks out at the first failure can
// never have a FIDO PIN tried.
func TestDoctorDANoTry(t *testing.T) {
	_, tpm := withSimulator(t)
	if err := tpmtest.SetDAParameters(tpm, 1, 600, 86400); err != nil {
		t.Fatal(err)
	}
	st, err := tpmstore.ReadDAStatus(tpm)
	if err != nil {
		t.Fatal(err)
	}
	if c := daCheck(st); c.status != checkFail || !strings.Contains(c.detail, "can never try a FIDO PIN") {
		t.Fatalf("maxTries 1: %+v", c)
	}
}

// TestResetStaleState: a state.db copy from before a reset is refused
// with a message naming the fix, and `tpm-fido reset` starts afresh
// from it.
func TestResetStaleState(t *testing.T) {
	dir, tpm := withSimulator(t)
	sd := "--state-dir=" + dir
	s, err := tpmstore.Open(tpmstore.Config{TPM: tpm, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	addResident(t, s, "ssh:", "openssh")
	s.Close()
	snap, err := os.ReadFile(tpmstore.StatePath(dir))
	if err != nil {
		t.Fatal(err)
	}
	withStdin(t, "YES\n")
	if _, e, rc := runCmd(t, "reset", sd); rc != 0 {
		t.Fatalf("reset: %s", e)
	}
	if err := os.WriteFile(tpmstore.StatePath(dir), snap, 0o600); err != nil {
		t.Fatal(err)
	}
	_, e, rc := runCmd(t, "list", sd)
	t.Logf("list on the old copy: %s", e)
	if rc == 0 || !strings.Contains(e, "reset after this copy of state.db was made") {
		t.Fatalf("list on a pre-reset copy: rc %d %q", rc, e)
	}
	withStdin(t, "YES\n")
	out, e, rc := runCmd(t, "reset", sd)
	if rc != 0 || !strings.Contains(out, "stale state was reset") {
		t.Fatalf("reset of the stale copy: rc %d %q %q", rc, out, e)
	}
	if out, _, rc := runCmd(t, "list", sd); rc != 0 || !strings.Contains(out, "no resident credentials") {
		t.Fatalf("list after: rc %d %q", rc, out)
	}
}

// TestResetStaleLeavesOtherKey: when another program removed the store's
// TPM anchor key and its handle now holds someone else's key, the state
// is stale; `tpm-fido reset` resets it without touching that key (a new
// handle for the new anchor key) and says so.
func TestResetStaleLeavesOtherKey(t *testing.T) {
	dir, tpm := withSimulator(t)
	sd := "--state-dir=" + dir
	s, err := tpmstore.Open(tpmstore.Config{TPM: tpm, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	addResident(t, s, "ssh:", "openssh")
	s.Close()
	// The store's anchor key is the one persistent object in its range.
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: 0x817F0000, PropertyCount: 1}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := rsp.CapabilityData.Data.Handles()
	if err != nil || len(hs.Handle) != 1 {
		t.Fatalf("anchor handle: %v %v", hs, err)
	}
	h := hs.Handle[0]
	pub, err := tpm2.ReadPublic{ObjectHandle: h}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	owner := tpm2.AuthHandle{Handle: tpm2.TPMRHOwner, Auth: tpm2.PasswordAuth(nil)}
	if _, err := (tpm2.EvictControl{Auth: owner, ObjectHandle: tpm2.NamedHandle{Handle: h, Name: pub.Name}, PersistentHandle: h}).Execute(tpm); err != nil {
		t.Fatal(err)
	}
	other, err := tpm2.CreatePrimary{PrimaryHandle: owner, InPublic: tpm2.New2B(tpm2.ECCSRKTemplate)}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := (tpm2.EvictControl{Auth: owner, ObjectHandle: tpm2.NamedHandle{Handle: other.ObjectHandle, Name: other.Name}, PersistentHandle: h}).Execute(tpm); err != nil {
		t.Fatal(err)
	}
	tpm2.FlushContext{FlushHandle: other.ObjectHandle}.Execute(tpm)

	withStdin(t, "YES\n")
	out, e, rc := runCmd(t, "reset", sd)
	t.Logf("reset: %s%s", out, e)
	if rc != 0 || !strings.Contains(out, "stale state was reset") || !strings.Contains(e, "left alone") || !strings.Contains(e, fmt.Sprintf("0x%08x", uint32(h))) {
		t.Fatalf("reset with another key at the anchor handle: rc %d %q %q", rc, out, e)
	}
	if got, err := (tpm2.ReadPublic{ObjectHandle: h}).Execute(tpm); err != nil || !bytes.Equal(got.Name.Buffer, other.Name.Buffer) {
		t.Fatalf("the other key at 0x%08x: %v", uint32(h), err)
	}
	if out, _, rc := runCmd(t, "list", sd); rc != 0 || !strings.Contains(out, "no resident credentials") {
		t.Fatalf("list after: rc %d %q", rc, out)
	}
}
