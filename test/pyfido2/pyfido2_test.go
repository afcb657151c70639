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
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

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

var (
	buildOnce sync.Once
	binDir    string
	buildErr  error
)

func TestMain(m *testing.M) {
	code := m.Run()
	if binDir != "" {
		os.RemoveAll(binDir)
	}
	os.Exit(code)
}

// daemonBinary builds cmd/tpm-fido once per test run.
func daemonBinary(t *testing.T) string {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not found: cannot build the daemon")
	}
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "tpm-fido-pyfido2-"); buildErr != nil {
			return
		}
		var out []byte
		out, buildErr = exec.Command(goTool, "build", "-o", filepath.Join(binDir, "tpm-fido"),
			"github.com/tpm-fido/tpm-fido/cmd/tpm-fido").CombinedOutput()
		if buildErr != nil {
			buildErr = &buildError{buildErr, out}
		}
	})
	if buildErr != nil {
		t.Fatalf("go build: %v", buildErr)
	}
	return filepath.Join(binDir, "tpm-fido")
}

type buildError struct {
	err error
	out []byte
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + string(e.out) }

// tpmSpec starts a swtpm of its own for one daemon and returns the --tpm
// value. The swtpm gets the dictionary-attack policy Windows provisions
// (32 failures, one forgiven every 10 minutes) instead of the reference
// 3: the PIN cases try wrong PINs on purpose, and the daemon refuses a
// PIN try that could put the machine's TPM into lockout.
func tpmSpec(t *testing.T) string {
	t.Helper()
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		t.Skipf("swtpm is not installed (apt install swtpm): %v", err)
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "data.sock")
	cmd := exec.Command(bin, "socket", "--tpm2",
		"--server", "type=unixio,path="+sock,
		"--ctrl", "type=unixio,path="+filepath.Join(dir, "ctrl.sock"),
		"--flags", "not-need-init,startup-clear",
		"--tpmstate", "dir="+dir)
	if err := cmd.Start(); err != nil {
		t.Fatalf("start swtpm: %v", err)
	}
	t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
	spec := "swtpm:" + sock
	// The socket file appears before swtpm accepts on it: retry until
	// the command goes through.
	for i := 0; ; i++ {
		tpm, err := tpmstore.OpenTPM(spec)
		if err == nil {
			err = tpmtest.SetDAParameters(tpm, 32, 600, 600)
			tpm.Close()
			if err == nil {
				return spec
			}
		}
		if i == 500 {
			t.Fatalf("swtpm: TPM2_DictionaryAttackParameters did not go through within 5 s: %v", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startDaemon runs `tpm-fido serve` with args and waits for its READY=1.
func startDaemon(t *testing.T, args ...string) {
	t.Helper()
	bin := daemonBinary(t)
	notifyPath := filepath.Join(t.TempDir(), "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	var stderr bytes.Buffer
	cmd := exec.Command(bin, append([]string{"serve"}, args...)...)
	cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath)
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-exited
			t.Errorf("daemon ignored SIGTERM")
		}
		if t.Failed() {
			t.Logf("daemon stderr:\n%s", stderr.String())
		}
	})
	ready := make(chan error, 1)
	go func() {
		notify.SetReadDeadline(time.Now().Add(60 * time.Second))
		buf := make([]byte, 64)
		n, err := notify.Read(buf)
		if err == nil && string(buf[:n]) != "READY=1" {
			err = &notReady{string(buf[:n])}
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			t.Fatalf("no READY=1 from the daemon: %v\n%s", err, stderr.String())
		}
	case <-exited:
		t.Fatalf("daemon exited before it was ready:\n%s", stderr.String())
	}
}

type notReady struct{ got string }

func (e *notReady) Error() string { return "sd_notify sent " + e.got }

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
		// answers to the other, where drive.py binds.
		var addrs [2]string
		for i := range addrs {
			c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
			if err != nil {
				t.Fatal(err)
			}
			addrs[i] = c.LocalAddr().String()
			c.Close()
		}
		spec := "udp:" + addrs[0] + "," + addrs[1]
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
			startDaemon(t, "--transport", daemonSpec, "--tpm", tpmSpec(t),
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
