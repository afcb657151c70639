package security_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/presence"
	"github.com/tpm-fido/tpm-fido/test/load/fidoclient"
	"github.com/tpm-fido/tpm-fido/test/load/inproc"
	"github.com/tpm-fido/tpm-fido/tpmstore/tpmsim"
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

// syncBuf is a goroutine-safe log sink.
type syncBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *syncBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *syncBuf) Bytes() []byte {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]byte(nil), l.b.Bytes()...)
}

// env is the whole authenticator in process on the TPM simulator, served
// over an in-memory report pipe.
type env struct {
	t      *testing.T
	tpm    transport.TPMCloser
	dir    string
	prompt *countingPrompter
	logs   *syncBuf
	hid    ctaphid.Config
	stack  *inproc.Stack
	stop   func()
	client *ctaphidtest.Client
}

type envOpts struct {
	relaxDA bool // let the TPM allow 1000 failed authorisations
	hid     ctaphid.Config
}

func openTPM(t *testing.T) transport.TPMCloser {
	t.Helper()
	tpm, err := tpmsim.Open()
	if err != nil {
		t.Skipf("TPM simulator unavailable: %v", err)
	}
	t.Cleanup(func() { tpm.Close() })
	return tpm
}

func newEnv(t *testing.T, o envOpts) *env {
	t.Helper()
	e := &env{t: t, tpm: openTPM(t), dir: t.TempDir(), prompt: &countingPrompter{}, logs: &syncBuf{}, hid: o.hid}
	if o.relaxDA {
		if err := setDAParameters(e.tpm, 1000, 1, 1); err != nil {
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

func (e *env) channel() *fidoclient.Channel {
	e.t.Helper()
	ch, err := fidoclient.Open(e.client)
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
func makeCred(t *testing.T, ch *fidoclient.Channel, rpID string) []byte {
	t.Helper()
	ad, err := ch.MakeCredential(fidoclient.MakeCredentialParams(rpID, []byte("user-"+rpID), cdh("reg"), false, false, nil))
	if err != nil {
		t.Fatalf("makeCredential for %s: %v", rpID, err)
	}
	if len(ad.CredID) == 0 {
		t.Fatal("makeCredential returned no credential ID")
	}
	return ad.CredID
}

// setDAParameters sends TPM2_DictionaryAttackParameters authorised by the
// empty lockout password of a fresh TPM (TPM 2.0 Part 3 §25.3).
func setDAParameters(tpm transport.TPM, maxTries, recoveryTime, lockoutRecovery uint32) error {
	var b []byte
	b = binary.BigEndian.AppendUint16(b, 0x8002) // TPM_ST_SESSIONS
	b = binary.BigEndian.AppendUint32(b, 0)      // size, set below
	b = binary.BigEndian.AppendUint32(b, 0x13A)  // TPM_CC_DictionaryAttackParameters
	b = binary.BigEndian.AppendUint32(b, 0x4000000A)
	b = binary.BigEndian.AppendUint32(b, 9)          // authorization area size
	b = binary.BigEndian.AppendUint32(b, 0x40000009) // TPM_RS_PW
	b = binary.BigEndian.AppendUint16(b, 0)          // empty nonce
	b = append(b, 0)                                 // attributes
	b = binary.BigEndian.AppendUint16(b, 0)          // empty password
	b = binary.BigEndian.AppendUint32(b, maxTries)
	b = binary.BigEndian.AppendUint32(b, recoveryTime)
	b = binary.BigEndian.AppendUint32(b, lockoutRecovery)
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	rsp, err := tpm.Send(b)
	if err != nil {
		return err
	}
	if len(rsp) < 10 {
		return fmt.Errorf("short response % x", rsp)
	}
	if rc := binary.BigEndian.Uint32(rsp[6:10]); rc != 0 {
		return fmt.Errorf("response code 0x%x", rc)
	}
	return nil
}
