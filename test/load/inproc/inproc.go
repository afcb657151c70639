// Package inproc assembles the daemon's stack in one process for tests and
// benchmarks: a TPM (simulator or a swtpm it starts), the key store over a
// command-counting TPM wrapper, the CTAP2 and U2F handlers behind
// ctap.Mux, and a CTAPHID server on a report device of the caller's choice.
package inproc

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
	"github.com/tpm-fido/tpm-fido/ctap/u2f"
	"github.com/tpm-fido/tpm-fido/presence"
	"github.com/tpm-fido/tpm-fido/tpmstore"
	"github.com/tpm-fido/tpm-fido/tpmstore/tpmsim"
	"github.com/tpm-fido/tpm-fido/tpmstore/tpmtest"
)

// ErrNoSwtpm is returned by StartSwtpm when the swtpm program is not
// installed.
var ErrNoSwtpm = errors.New("inproc: swtpm not installed")

// Swtpm is a swtpm process serving a TPM 2.0 on a Unix data socket.
type Swtpm struct {
	Dir  string
	Sock string
	cmd  *exec.Cmd
}

// StartSwtpm starts swtpm with its state in dir and waits for its socket.
func StartSwtpm(dir string) (*Swtpm, error) {
	bin, err := exec.LookPath("swtpm")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrNoSwtpm, err)
	}
	s := &Swtpm{Dir: dir, Sock: filepath.Join(dir, "data.sock")}
	s.cmd = exec.Command(bin, "socket", "--tpm2",
		"--server", "type=unixio,path="+s.Sock,
		"--ctrl", "type=unixio,path="+s.Sock+".ctrl", // where libtss2's swtpm TCTI looks for it
		"--flags", "not-need-init,startup-clear",
		"--tpmstate", "dir="+dir)
	// swtpm logs every client disconnect on stderr; not wanted here.
	s.cmd.Stderr = nil
	if err := s.cmd.Start(); err != nil {
		return nil, fmt.Errorf("inproc: start swtpm: %w", err)
	}
	for range 200 {
		if c, err := net.Dial("unix", s.Sock); err == nil {
			c.Close()
			return s, nil
		}
		time.Sleep(10 * time.Millisecond)
	}
	s.Stop()
	return nil, errors.New("inproc: swtpm socket did not appear within 2 s")
}

// SwtpmOrSkip starts a swtpm for the test t, with its state in a
// temporary directory of t, stopped when the test ends. Without swtpm the
// test skips.
func SwtpmOrSkip(t testing.TB) *Swtpm {
	t.Helper()
	sw, err := StartSwtpm(t.TempDir())
	if errors.Is(err, ErrNoSwtpm) {
		t.Skipf("swtpm is not installed (apt install swtpm): %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sw.Stop)
	return sw
}

// Spec is the --tpm value naming this swtpm.
func (s *Swtpm) Spec() string { return "swtpm:" + s.Sock }

// Stop kills swtpm and waits for it.
func (s *Swtpm) Stop() {
	if s.cmd.Process != nil {
		_ = s.cmd.Process.Kill()
		_ = s.cmd.Wait()
	}
}

// OpenTPM opens "simulator" or a tpmstore.OpenTPM spec.
func OpenTPM(spec string) (transport.TPMCloser, error) {
	if spec == "simulator" {
		return tpmsim.Open()
	}
	return tpmstore.OpenTPM(spec)
}

// Config configures a Stack.
type Config struct {
	TPM      transport.TPM // required; the Stack does not close it
	Dir      string        // state directory
	Presence presence.Prompter
	Logger   *slog.Logger // nil: discard
	HID      ctaphid.Config
	// MaxResidents is the store's capacity (0: what the state holds, else
	// tpmstore's default).
	MaxResidents int
}

// Stack is a running authenticator.
type Stack struct {
	Counting *tpmtest.CountingTPM
	Store    *tpmstore.Store
	Handler  ctaphid.Handler
	log      *slog.Logger
	hidCfg   ctaphid.Config
}

// New opens the store and builds the handlers.
func New(cfg Config) (*Stack, error) {
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if cfg.Presence == nil {
		return nil, errors.New("inproc: Presence is required")
	}
	counting := tpmtest.NewCountingTPM(cfg.TPM)
	store, err := tpmstore.Open(tpmstore.Config{TPM: counting, Dir: cfg.Dir, Logger: log, MaxResidents: cfg.MaxResidents})
	if err != nil {
		return nil, fmt.Errorf("inproc: open store: %w", err)
	}
	auth, err := ctap2.New(ctap2.Config{Store: store, Presence: cfg.Presence, Logger: log})
	if err != nil {
		store.Close()
		return nil, err
	}
	u, err := u2f.New(u2f.Config{Store: store, Presence: cfg.Presence, Logger: log})
	if err != nil {
		store.Close()
		return nil, err
	}
	hc := cfg.HID
	if hc.Logger == nil {
		hc.Logger = log
	}
	return &Stack{Counting: counting, Store: store, Handler: &ctap.Mux{CBOR: auth, MSG: u}, log: log, hidCfg: hc}, nil
}

// Serve runs a CTAPHID server on dev until ctx ends; the returned function
// cancels it and waits for it to stop.
func (s *Stack) Serve(ctx context.Context, dev ctaphid.ReportDevice) (stop func()) {
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	srv := ctaphid.NewServer(dev, s.Handler, s.hidCfg)
	go func() {
		defer close(done)
		if err := srv.Serve(ctx); err != nil {
			s.log.Warn("ctaphid server stopped", "err", err)
		}
	}()
	return func() { cancel(); <-done }
}

// Close closes the store.
func (s *Stack) Close() error { return s.Store.Close() }
