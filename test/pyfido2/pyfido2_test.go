// Package pyfido2 drives the real tpm-fido daemon with Yubico's
// python-fido2 (Debian 12's python3-fido2 0.9.1), a client the project
// did not write and that speaks a different dialect from libfido2: U2F
// APDUs framed with extended Lc 0, a WebAuthn client and relying party of
// its own, the legacy getPinToken path. The client script is drive.py;
// this test starts swtpm and the daemon binary for each case and runs it.
package pyfido2

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/test/daemontest"
	"github.com/tpm-fido/tpm-fido/test/load/inproc"
	"github.com/tpm-fido/tpm-fido/tpmstore"
	"github.com/tpm-fido/tpm-fido/tpmstore/tpmtest"
)

// python is Debian's interpreter: the one python3-fido2 is installed for
// (a python3 earlier on PATH may be another installation without it).
const python = "/usr/bin/python3"

// requirePythonFido2 skips the test, saying why, unless python3-fido2
// 0.9 is importable, and returns its version.
func requirePythonFido2(t *testing.T) string {
	t.Helper()
	out, err := exec.Command(python, "-c", "import fido2; print(fido2.__version__)").CombinedOutput()
	if err != nil {
		t.Skipf("python3-fido2 is not installed (apt install python3-fido2): %v: %s", err, bytes.TrimSpace(out))
	}
	v := strings.TrimSpace(string(out))
	if !strings.HasPrefix(v, "0.9.") {
		t.Skipf("python-fido2 %s: drive.py is written for 0.9 (Debian 12's python3-fido2)", v)
	}
	return v
}

func TestMain(m *testing.M) {
	code := m.Run()
	daemontest.Cleanup()
	os.Exit(code)
}

// tpmSpec starts a swtpm of its own for one daemon and returns the --tpm
// value. The swtpm gets the dictionary-attack policy Windows provisions
// (32 failures, one forgiven every 10 minutes) instead of the reference
// 3: the PIN cases try wrong PINs on purpose, and the daemon refuses a
// PIN try that could put the machine's TPM into lockout.
func tpmSpec(t *testing.T) string {
	t.Helper()
	sw := inproc.SwtpmOrSkip(t)
	tpm, err := tpmstore.OpenTPM(sw.Spec())
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	if err := tpmtest.SetDAParameters(tpm, 32, 600, 600); err != nil {
		t.Fatalf("swtpm: TPM2_DictionaryAttackParameters: %v", err)
	}
	return sw.Spec()
}

// transport returns the daemon's --transport value and drive.py's
// TRANSPORT argument for kind "unix" or "udp".
func transport(t *testing.T, kind string) (daemon, client string) {
	t.Helper()
	switch kind {
	case "unix":
		sock := filepath.Join(t.TempDir(), "run", "hid.sock")
		return "unix:" + sock, "unix:" + sock
	case "udp":
		// Two free loopback ports: the daemon listens on one and
		// answers to the other, where drive.py binds (so the test's own
		// socket on it is closed first).
		spec, c, err := ctaphidtest.LoopbackUDP(0)
		if err != nil {
			t.Fatal(err)
		}
		c.Close()
		return spec, spec
	}
	t.Fatalf("unknown transport %q", kind)
	return "", ""
}

// TestPythonFido2 runs each drive.py case against a fresh daemon (new
// swtpm, new state, so the cases do not see each other's credentials or
// PIN) and logs what python-fido2 printed.
func TestPythonFido2(t *testing.T) {
	version := requirePythonFido2(t)
	t.Logf("python-fido2 %s", version)
	for _, tc := range []struct {
		name, transport, presence string
	}{
		{"ctap2", "unix", ""},
		{"ctap2", "udp", ""},
		{"webauthn", "unix", ""},
		{"clientpin", "unix", ""},
		{"credman", "unix", ""},
		{"ctap1", "unix", ""},
		{"ctap1", "udp", ""},
		{"hmac-secret", "unix", ""},
		{"channels", "unix", ""},
		{"channels", "udp", ""},
		{"waiting", "unix", "allow-after:1s"},
		{"waiting", "udp", "allow-after:1s"},
	} {
		t.Run(tc.name+"/"+tc.transport, func(t *testing.T) {
			presence := tc.presence
			if presence == "" {
				presence = "always-allow"
			}
			daemonSpec, clientSpec := transport(t, tc.transport)
			daemontest.Start(t, "--transport", daemonSpec, "--tpm", tpmSpec(t),
				"--state-dir", filepath.Join(t.TempDir(), "state"),
				"--presence", presence, "--insecure-test-mode", "--log-level", "warn")
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			out, err := exec.CommandContext(ctx, python, "drive.py", clientSpec, tc.name).CombinedOutput()
			t.Logf("drive.py %s %s:\n%s", tc.transport, tc.name, out)
			if err != nil {
				t.Fatalf("drive.py: %v", err)
			}
			if lines := strings.Split(strings.TrimSpace(string(out)), "\n"); lines[len(lines)-1] != "OK" {
				t.Fatal("drive.py did not finish with OK")
			}
		})
	}
}
