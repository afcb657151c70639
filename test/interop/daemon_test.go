//go:build cgo

package interop

import (
	"context"
	"errors"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
	"github.com/tpm-fido/tpm-fido/ctap/u2f"
	"github.com/tpm-fido/tpm-fido/presence"
	"github.com/tpm-fido/tpm-fido/tpmstore"
	"github.com/tpm-fido/tpm-fido/tpmstore/tpmsim"
)

// daemon is the authenticator in-process: tpmstore on the TPM simulator,
// ctap2 and u2f behind ctap.Mux, served by the CTAPHID server on a
// SOCK_SEQPACKET Unix socket, one client connection at a time.
type daemon struct {
	path  string
	store *tpmstore.Store
}

// seqpacketDevice is a ctaphid.ReportDevice over one accepted
// SOCK_SEQPACKET connection: one packet is one 64-byte report.
type seqpacketDevice struct{ c *net.UnixConn }

func (d seqpacketDevice) ReadReport(p []byte) (int, error) { return d.c.Read(p) }
func (d seqpacketDevice) WriteReport(p []byte) error {
	_, err := d.c.Write(p)
	return err
}
func (d seqpacketDevice) Close() error { return d.c.Close() }

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
	log := testLogger(t)
	store, err := tpmstore.Open(tpmstore.Config{TPM: sim, Dir: t.TempDir(), Logger: log})
	if err != nil {
		t.Fatalf("tpmstore.Open: %v", err)
	}
	t.Cleanup(func() { store.Close() })
	allow := presence.Fixed{Allow: true}
	a, err := ctap2.New(ctap2.Config{Store: store, Presence: allow, Logger: log})
	if err != nil {
		t.Fatalf("ctap2.New: %v", err)
	}
	u, err := u2f.New(u2f.Config{Store: store, Presence: allow, Logger: log})
	if err != nil {
		t.Fatalf("u2f.New: %v", err)
	}
	mux := &ctap.Mux{CBOR: a, MSG: u}

	dir, err := os.MkdirTemp("", "tpmfido-interop")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "ctaphid.sock")
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatalf("listen: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := ln.AcceptUnix()
			if err != nil {
				if !errors.Is(err, net.ErrClosed) {
					t.Errorf("accept: %v", err)
				}
				return
			}
			srv := ctaphid.NewServer(seqpacketDevice{c}, mux, ctaphid.Config{Logger: log})
			if err := srv.Serve(ctx); err != nil && ctx.Err() == nil {
				log.Debug("ctaphid server ended", "err", err)
			}
			c.Close()
		}
	}()
	t.Cleanup(func() {
		cancel()
		ln.Close()
		wg.Wait()
	})
	return &daemon{path: path, store: store}
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
