package security_test

import (
	"context"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/presence"
	"github.com/tpm-fido/tpm-fido/test/load/inproc"
	"github.com/tpm-fido/tpm-fido/test/logbuf"
	"github.com/tpm-fido/tpm-fido/tpmstore/tpmsim"
	"github.com/tpm-fido/tpm-fido/tpmstore/tpmtest"
)

// countingPrompter counts prompts and answers each with answer (nil:
// approve).
type countingPrompter struct {
	mu     sync.Mutex
	n      int
	answer func(ctx context.Context) error
}

func (p *countingPrompter) Confirm(ctx context.Context, _ presence.Request) error {
	p.mu.Lock()
	p.n++
	f := p.answer
	p.mu.Unlock()
	if f == nil {
		return nil
	}
	return f(ctx)
}

func (p *countingPrompter) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.n
}

func (p *countingPrompter) set(f func(ctx context.Context) error) {
	p.mu.Lock()
	p.answer = f
	p.mu.Unlock()
}

// env is the whole authenticator in process on the TPM simulator, served
// over an in-memory report pipe.
type env struct {
	t      *testing.T
	tpm    transport.TPMCloser
	dir    string
	prompt *countingPrompter
	logs   *logbuf.Buffer
	hid    ctaphid.Config
	stack  *inproc.Stack
	stop   func()
	client *ctaphidtest.Client
}

type envOpts struct {
	// da, when set, is the TPM's dictionary-attack policy: maxTries,
	// recoveryTime and lockoutRecovery (seconds). Unset, the TPM keeps
	// its default (3 failures, one forgiven every 1000 s).
	da    *[3]uint32
	swtpm bool // a swtpm process instead of the in-process simulator
	hid   ctaphid.Config
}

// windowsDA is the policy Windows 10 and later provision.
var windowsDA = &[3]uint32{32, 600, 86400}

func openTPM(t *testing.T, swtpm bool) transport.TPMCloser {
	t.Helper()
	if swtpm {
		tpm, err := inproc.OpenTPM(inproc.SwtpmOrSkip(t).Spec())
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { tpm.Close() })
		return tpm
	}
	tpm, err := tpmsim.Open()
	if err != nil {
		t.Skipf("TPM simulator unavailable: %v", err)
	}
	t.Cleanup(func() { tpm.Close() })
	return tpm
}

// backendNames are the TPMs a test can run on (newEnv skips swtpm when
// it is not installed).
var backendNames = []struct {
	name  string
	swtpm bool
}{{"simulator", false}, {"swtpm", true}}

func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	e := &env{t: t, tpm: openTPM(t, o.swtpm), dir: t.TempDir(), prompt: &countingPrompter{}, logs: &logbuf.Buffer{}, hid: o.hid}
	if o.da != nil {
		if err := setDAParameters(e.tpm, o.da[0], o.da[1], o.da[2]); err != nil {
			t.Fatalf("TPM2_DictionaryAttackParameters: %v", err)
		}
	}
	e.start()
	t.Cleanup(e.shutdown)
	return e
}

// start opens the store and serves it (a daemon start).
func (e *env) start() {
	e.t.Helper()
	log := slog.New(slog.NewTextHandler(e.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	s, err := inproc.New(inproc.Config{TPM: e.tpm, Dir: e.dir, Presence: e.prompt, Logger: log, HID: e.hid})
	if err != nil {
		e.t.Fatal(err)
	}
	pipe := ctaphidtest.NewPipe()
	e.stack = s
	e.stop = s.Serve(context.Background(), pipe.Device())
	e.client = &ctaphidtest.Client{Conn: pipe.Host(10 * time.Second)}
}

// shutdown stops the server and closes the store (a daemon exit).
func (e *env) shutdown() {
	if e.stop != nil {
		e.stop()
		e.stop = nil
	}
	if e.stack != nil {
		e.stack.Close()
		e.stack = nil
	}
}

// restart is a daemon restart on the same TPM and state directory.
func (e *env) restart() {
	e.t.Helper()
	e.shutdown()
	e.start()
}

func (e *env) channel() *ctaphidtest.Channel {
	e.t.Helper()
	ch, err := e.client.OpenChannel()
	if err != nil {
		e.t.Fatalf("INIT: %v", err)
	}
	return ch
}

func cdh(s string) []byte {
	b := make([]byte, 32)
	copy(b, s)
	return b
}

// makeCred registers a non-resident credential for rpID and returns its ID.
func makeCred(t *testing.T, ch *ctaphidtest.Channel, rpID string) []byte {
	t.Helper()
	ad, err := ch.MakeCredential(ctaphidtest.MakeCredentialParams(rpID, []byte("user-"+rpID), cdh("reg"), false, false, nil))
	if err != nil {
		t.Fatalf("makeCredential for %s: %v", rpID, err)
	}
	if len(ad.CredID) == 0 {
		t.Fatal("makeCredential returned no credential ID")
	}
	return ad.CredID
}

// setDAParameters sets the TPM's dictionary-attack policy.
func setDAParameters(tpm transport.TPM, maxTries, recoveryTime, lockoutRecovery uint32) error {
	return tpmtest.SetDAParameters(tpm, maxTries, recoveryTime, lockoutRecovery)
}
