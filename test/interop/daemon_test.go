//go:build cgo && !nolibfido2

package interop

import (
	"context"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/tpm-fido/tpm-fido/presence"
	"github.com/tpm-fido/tpm-fido/test/load/inproc"
	"github.com/tpm-fido/tpm-fido/tpmstore/tpmsim"
	"github.com/tpm-fido/tpm-fido/tpmstore/tpmtest"
	"github.com/tpm-fido/tpm-fido/transport"
)

// daemon is the authenticator in-process (inproc: tpmstore on the TPM
// simulator, ctap2 and u2f behind ctap.Mux), served by the CTAPHID server
// on the daemon's unix: transport (SOCK_SEQPACKET, one packet per report).
type daemon struct {
	path string
}

func requireLibfido2(t *testing.T) {
	t.Helper()
	if _, err := exec.LookPath("pkg-config"); err != nil {
		t.Skip("pkg-config not installed")
	}
	if err := exec.Command("pkg-config", "--exists", "libfido2").Run(); err != nil {
		t.Skip("libfido2 (libfido2-dev) not installed")
	}
}

func testLogger(t *testing.T) *slog.Logger {
	if os.Getenv("INTEROP_LOG") != "" {
		return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	return slog.New(slog.NewTextHandler(io.Discard, nil))
}

// startDaemon starts a fresh authenticator (new simulator TPM, new state
// directory) and returns it; everything stops when the test ends.
func startDaemon(t *testing.T) *daemon {
	t.Helper()
	requireLibfido2(t)
	sim, err := tpmsim.Open()
	if err != nil {
		t.Skipf("TPM simulator unavailable: %v", err)
	}
	t.Cleanup(func() { sim.Close() })
	// The reference simulator starts with 3 tries and 1000 s recovery: a
	// PIN test would hit TPM lockout, which a real TPM's larger budget
	// does not. Give it a realistic budget (lockout auth is empty).
	if err := tpmtest.SetDAParameters(sim, 32, 10, 10); err != nil {
		t.Fatalf("TPM2_DictionaryAttackParameters: %v", err)
	}
	log := testLogger(t)
	st, err := inproc.New(inproc.Config{TPM: sim, Dir: t.TempDir(), Presence: presence.Fixed{Allow: true}, Logger: log})
	if err != nil {
		t.Fatalf("inproc.New: %v", err)
	}
	t.Cleanup(func() { st.Close() })
	dir, err := os.MkdirTemp("", "tpmfido-interop")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "ctaphid.sock")
	dev, err := transport.Open("unix:"+path, log)
	if err != nil {
		t.Fatalf("transport.Open: %v", err)
	}
	t.Cleanup(st.Serve(context.Background(), dev))
	return &daemon{path: path}
}

// open connects libfido2 to d; the device is closed when the test ends.
func (d *daemon) open(t *testing.T) *Device {
	t.Helper()
	dev, err := Open(d.path)
	if err != nil {
		t.Fatalf("libfido2 open: %v", err)
	}
	t.Cleanup(dev.Close)
	return dev
}
