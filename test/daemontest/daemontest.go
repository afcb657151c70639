// Package daemontest runs the real tpm-fido daemon for tests: the binary
// built once per test process, `tpm-fido serve` started as a child with a
// NOTIFY_SOCKET of the test's own and waited for until it says READY=1
// (every start-up check passed, the transport open), and stopped with
// SIGTERM when the test ends.
package daemontest

import (
	"bytes"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"
)

var (
	buildOnce sync.Once
	binDir    string
	binPath   string
	buildErr  error
)

// Binary returns the tpm-fido binary: $TPM_FIDO_DAEMON when set, else
// cmd/tpm-fido built once per test process into a temporary directory
// (Cleanup removes it). Without a go tool it skips t.
func Binary(t testing.TB) string {
	t.Helper()
	if p := os.Getenv("TPM_FIDO_DAEMON"); p != "" {
		return p
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("no go tool to build the daemon (set TPM_FIDO_DAEMON): %v", err)
	}
	buildOnce.Do(func() {
		if binDir, buildErr = os.MkdirTemp("", "tpm-fido-daemontest-"); buildErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "tpm-fido")
		out, err := exec.Command(goTool, "build", "-o", binPath, "github.com/tpm-fido/tpm-fido/cmd/tpm-fido").CombinedOutput()
		if err != nil {
			buildErr = fmt.Errorf("%w\n%s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatalf("go build: %v", buildErr)
	}
	return binPath
}

// Cleanup removes the binary Binary built; call it from TestMain after
// the tests ran.
func Cleanup() {
	if binDir != "" {
		os.RemoveAll(binDir)
	}
}

// ReadyTimeout is how long Start waits for READY=1 (a first start on a
// loaded machine makes its TPM keys).
const ReadyTimeout = 60 * time.Second

// Daemon is a running `tpm-fido serve`.
type Daemon struct {
	t      testing.TB
	Cmd    *exec.Cmd
	stderr bytes.Buffer
	exited chan struct{}
	once   sync.Once
}

// Start runs `tpm-fido serve args...` and returns once it has sent
// READY=1; a daemon that exits first, or stays silent for ReadyTimeout,
// fails t with its standard error. It is stopped when the test ends; its
// standard error is logged when the test failed.
func Start(t testing.TB, args ...string) *Daemon {
	t.Helper()
	bin := Binary(t)
	notifyPath := filepath.Join(t.TempDir(), "notify")
	notify, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: notifyPath, Net: "unixgram"})
	if err != nil {
		t.Fatal(err)
	}
	defer notify.Close()
	d := &Daemon{t: t, exited: make(chan struct{})}
	d.Cmd = exec.Command(bin, append([]string{"serve"}, args...)...)
	d.Cmd.Env = append(os.Environ(), "NOTIFY_SOCKET="+notifyPath)
	d.Cmd.Stderr = &d.stderr
	if err := d.Cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { d.Cmd.Wait(); close(d.exited) }()
	t.Cleanup(func() {
		d.Stop()
		if t.Failed() {
			t.Logf("daemon stderr:\n%s", d.stderr.String())
		}
	})
	ready := make(chan error, 1)
	go func() {
		notify.SetReadDeadline(time.Now().Add(ReadyTimeout))
		buf := make([]byte, 256)
		n, err := notify.Read(buf)
		if err == nil && string(buf[:n]) != "READY=1" {
			err = fmt.Errorf("sd_notify sent %q, want READY=1", buf[:n])
		}
		ready <- err
	}()
	select {
	case err := <-ready:
		if err != nil {
			code, out := d.Stop()
			t.Fatalf("no READY=1 from the daemon (%v); exit %d, stderr:\n%s", err, code, out)
		}
	case <-d.exited:
		t.Fatalf("the daemon exited before it was ready (%v):\n%s", d.Cmd.ProcessState, d.stderr.String())
	}
	return d
}

// Pid is the daemon's process id.
func (d *Daemon) Pid() int { return d.Cmd.Process.Pid }

// Stop sends SIGTERM (once) and waits for the daemon to exit, killing it
// after 10 s (which fails the test). It returns the exit code and
// everything the daemon wrote on standard error.
func (d *Daemon) Stop() (exitCode int, stderr string) {
	d.once.Do(func() {
		if err := d.Cmd.Process.Signal(syscall.SIGTERM); err != nil && !errors.Is(err, os.ErrProcessDone) {
			d.t.Errorf("SIGTERM: %v", err)
		}
		select {
		case <-d.exited:
		case <-time.After(10 * time.Second):
			d.Cmd.Process.Kill()
			<-d.exited
			d.t.Errorf("the daemon ignored SIGTERM")
		}
	})
	return d.Cmd.ProcessState.ExitCode(), d.stderr.String()
}
