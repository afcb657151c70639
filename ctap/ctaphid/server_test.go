package ctaphid_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"runtime"
	"sync"
	"testing"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
)

type env struct {
	t      testing.TB
	srv    *ctaphid.Server
	client *ctaphidtest.Client
	host   *ctaphidtest.Host
	stop   func()
}

func testLogger(t *testing.T) *slog.Logger {
	return slog.New(slog.NewTextHandler(tWriter{t}, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

type tWriter struct{ t *testing.T }

func (w tWriter) Write(p []byte) (int, error) {
	w.t.Helper()
	w.t.Log(string(bytes.TrimRight(p, "\n")))
	return len(p), nil
}

// start runs a server on an in-memory pipe. If prepare is non-nil it is
// called on the server before Serve starts.
func start(t testing.TB, h ctaphid.Handler, cfg ctaphid.Config, prepare func(*ctaphid.Server)) *env {
	t.Helper()
	if h == nil {
		h = &ctap.Mux{}
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	pipe := ctaphidtest.NewPipe()
	srv := ctaphid.NewServer(pipe.Device(), h, cfg)
	if prepare != nil {
		prepare(srv)
	}
	host := pipe.Host(5 * time.Second)
	e := &env{t: t, srv: srv, host: host, client: &ctaphidtest.Client{Conn: host}}
	e.stop = ctaphidtest.Serve(t, srv)
	return e
}

func (e *env) init() uint32 {
	e.t.Helper()
	cid, err := e.client.Init()
	if err != nil {
		e.t.Fatalf("INIT: %v", err)
	}
	return cid
}

func (e *env) transact(cid uint32, cmd byte, payload []byte) ctaphidtest.Frame {
	e.t.Helper()
	f, err := e.client.Transact(cid, cmd, payload)
	if err != nil {
		e.t.Fatalf("transact cmd 0x%02x: %v", cmd, err)
	}
	return f
}

func (e *env) raw(report []byte) {
	e.t.Helper()
	p := make([]byte, ctaphid.ReportSize)
	copy(p, report)
	if err := e.host.WriteReport(p); err != nil {
		e.t.Fatal(err)
	}
}

func expectError(t *testing.T, f ctaphidtest.Frame, cid uint32, code byte) {
	t.Helper()
	if f.CID != cid || f.Cmd != ctaphid.CmdError || len(f.Payload) != 1 || f.Payload[0] != code {
		t.Fatalf("got cid %08x cmd 0x%02x payload % x, want ERROR 0x%02x on %08x", f.CID, f.Cmd, f.Payload, code, cid)
	}
}

func initPacket(cid uint32, cmd byte, bcnt int, data []byte) []byte {
	p := make([]byte, ctaphid.ReportSize)
	binary.BigEndian.PutUint32(p, cid)
	p[4] = cmd | 0x80
	binary.BigEndian.PutUint16(p[5:], uint16(bcnt))
	copy(p[7:], data)
	return p
}

func contPacket(cid uint32, seq byte, data []byte) []byte {
	p := make([]byte, ctaphid.ReportSize)
	binary.BigEndian.PutUint32(p, cid)
	p[4] = seq
	copy(p[5:], data)
	return p
}

func pattern(n int) []byte {
	b := make([]byte, n)
	for i := range b {
		b[i] = byte(i*7 + i>>8)
	}
	return b
}

func TestInitResponse(t *testing.T) {
	e := start(t, nil, ctaphid.Config{Version: [3]byte{1, 2, 3}}, nil)
	nonce := []byte{9, 8, 7, 6, 5, 4, 3, 2}
	f := e.transact(ctaphid.BroadcastCID, ctaphid.CmdInit, nonce)
	if f.Cmd != ctaphid.CmdInit || f.CID != ctaphid.BroadcastCID || len(f.Payload) != 17 {
		t.Fatalf("INIT response cid %08x cmd 0x%02x % x", f.CID, f.Cmd, f.Payload)
	}
	if !bytes.Equal(f.Payload[:8], nonce) {
		t.Errorf("nonce % x, want % x", f.Payload[:8], nonce)
	}
	cid := binary.BigEndian.Uint32(f.Payload[8:12])
	if cid == 0 || cid == ctaphid.BroadcastCID {
		t.Errorf("allocated reserved channel %08x", cid)
	}
	if want := []byte{2, 1, 2, 3, ctaphid.CapWink | ctaphid.CapCBOR}; !bytes.Equal(f.Payload[12:], want) {
		t.Errorf("protocol/version/caps % x, want % x", f.Payload[12:], want)
	}
	if f.Payload[16]&ctaphid.CapNMSG != 0 {
		t.Error("NMSG set although MSG is supported")
	}
	// INIT with a wrong length.
	e.raw(initPacket(ctaphid.BroadcastCID, ctaphid.CmdInit, 4, nonce))
	f, err := e.client.RecvOn(ctaphid.BroadcastCID)
	if err != nil {
		t.Fatal(err)
	}
	expectError(t, f, ctaphid.BroadcastCID, ctaphid.ErrInvalidLen)
}

func TestPing(t *testing.T) {
	e := start(t, nil, ctaphid.Config{}, nil)
	cid := e.init()
	for _, n := range []int{0, 1, 57, 58, 116, 117, 1000, ctaphid.MaxMessageSize} {
		data := pattern(n)
		f := e.transact(cid, ctaphid.CmdPing, data)
		if f.Cmd != ctaphid.CmdPing || f.CID != cid || !bytes.Equal(f.Payload, data) {
			t.Errorf("PING %d: got cmd 0x%02x len %d", n, f.Cmd, len(f.Payload))
		}
	}
	if ctaphid.MaxMessageSize != 7609 {
		t.Errorf("MaxMessageSize = %d, want 7609", ctaphid.MaxMessageSize)
	}
}

func TestPingTooLong(t *testing.T) {
	e := start(t, nil, ctaphid.Config{}, nil)
	cid := e.init()
	e.raw(initPacket(cid, ctaphid.CmdPing, ctaphid.MaxMessageSize+1, nil))
	f, err := e.client.RecvOn(cid)
	if err != nil {
		t.Fatal(err)
	}
	expectError(t, f, cid, ctaphid.ErrInvalidLen)
	// The channel still works.
	if f := e.transact(cid, ctaphid.CmdPing, []byte("ok")); f.Cmd != ctaphid.CmdPing {
		t.Errorf("PING after INVALID_LEN: cmd 0x%02x", f.Cmd)
	}
}

func TestInvalidSeq(t *testing.T) {
	e := start(t, nil, ctaphid.Config{}, nil)
	cid := e.init()
	e.raw(initPacket(cid, ctaphid.CmdPing, 200, pattern(57)))
	e.raw(contPacket(cid, 1, pattern(59))) // seq 0 expected
	f, err := e.client.RecvOn(cid)
	if err != nil {
		t.Fatal(err)
	}
	expectError(t, f, cid, ctaphid.ErrInvalidSeq)
	if f := e.transact(cid, ctaphid.CmdPing, pattern(100)); f.Cmd != ctaphid.CmdPing || len(f.Payload) != 100 {
		t.Errorf("PING after INVALID_SEQ: cmd 0x%02x len %d", f.Cmd, len(f.Payload))
	}
}

func TestNewRequestDuringReassembly(t *testing.T) {
	e := start(t, nil, ctaphid.Config{}, nil)
	cid := e.init()
	e.raw(initPacket(cid, ctaphid.CmdPing, 200, pattern(57)))
	e.raw(initPacket(cid, ctaphid.CmdPing, 3, []byte("abc")))
	f, err := e.client.RecvOn(cid)
	if err != nil {
		t.Fatal(err)
	}
	expectError(t, f, cid, ctaphid.ErrInvalidSeq)
}

func TestMsgTimeout(t *testing.T) {
	e := start(t, nil, ctaphid.Config{ContinuationTimeout: 50 * time.Millisecond}, nil)
	cid := e.init()
	e.raw(initPacket(cid, ctaphid.CmdPing, 100, pattern(57)))
	f, err := e.client.RecvOn(cid)
	if err != nil {
		t.Fatal(err)
	}
	expectError(t, f, cid, ctaphid.ErrMsgTimeout)
	// The partial message was dropped: a late continuation is ignored
	// and a fresh PING works.
	e.raw(contPacket(cid, 0, pattern(59)))
	if f := e.transact(cid, ctaphid.CmdPing, []byte("x")); f.Cmd != ctaphid.CmdPing || string(f.Payload) != "x" {
		t.Errorf("PING after timeout: cmd 0x%02x % x", f.Cmd, f.Payload)
	}
}

func TestUnknownCommand(t *testing.T) {
	e := start(t, nil, ctaphid.Config{}, nil)
	cid := e.init()
	for _, cmd := range []byte{0x02, 0x30, 0x3B, 0x3F, 0x7F} {
		expectError(t, e.transact(cid, cmd, []byte{1}), cid, ctaphid.ErrInvalidCmd)
	}
}

func TestInvalidChannel(t *testing.T) {
	e := start(t, nil, ctaphid.Config{}, nil)
	cid := e.init()
	for _, bad := range []uint32{cid + 1, 0x12345678, ctaphid.BroadcastCID, 0} {
		expectError(t, e.transact(bad, ctaphid.CmdPing, []byte{1}), bad, ctaphid.ErrInvalidChannel)
	}
	// INIT on a channel never allocated.
	expectError(t, e.transact(cid+5, ctaphid.CmdInit, pattern(8)), cid+5, ctaphid.ErrInvalidChannel)
}

// blocker is a handler that reports its start and waits for release or
// cancellation.
type blocker struct {
	started chan struct{}
	release chan []byte
	status  ctap.KeepaliveStatus
	ret     func(ctx context.Context) ([]byte, error)
}

func newBlocker() *blocker {
	return &blocker{started: make(chan struct{}, 16), release: make(chan []byte, 1)}
}

func (b *blocker) Handle(ctx context.Context, req ctap.Request) ([]byte, error) {
	if b.status != 0 {
		ctap.SetKeepalive(ctx, b.status)
	}
	b.started <- struct{}{}
	select {
	case r := <-b.release:
		return r, nil
	case <-ctx.Done():
		if b.ret != nil {
			return b.ret(ctx)
		}
		return nil, ctx.Err()
	}
}

func TestChannelBusy(t *testing.T) {
	b := newBlocker()
	e := start(t, b, ctaphid.Config{}, nil)
	a, other := e.init(), e.init()
	if err := e.client.Send(a, ctaphid.CmdCBOR, []byte{0x04}); err != nil {
		t.Fatal(err)
	}
	<-b.started
	expectError(t, e.transact(other, ctaphid.CmdPing, []byte{1}), other, ctaphid.ErrChannelBusy)
	expectError(t, e.transact(other, ctaphid.CmdCBOR, []byte{4}), other, ctaphid.ErrChannelBusy)
	expectError(t, e.transact(a, ctaphid.CmdCBOR, []byte{4}), a, ctaphid.ErrChannelBusy)
	// INIT is still served.
	if _, err := e.client.Init(); err != nil {
		t.Fatalf("INIT while busy: %v", err)
	}
	b.release <- []byte{0, 0xA0}
	f, err := e.client.RecvOn(a)
	if err != nil {
		t.Fatal(err)
	}
	if f.Cmd != ctaphid.CmdCBOR || !bytes.Equal(f.Payload, []byte{0, 0xA0}) {
		t.Fatalf("CBOR response cmd 0x%02x % x", f.Cmd, f.Payload)
	}
	// Busy while another channel is mid-message, too.
	e.raw(initPacket(a, ctaphid.CmdPing, 100, pattern(57)))
	expectError(t, e.transact(other, ctaphid.CmdPing, []byte{1}), other, ctaphid.ErrChannelBusy)
	// A refused multi-packet message draws one CHANNEL_BUSY, not one per
	// packet: its continuation is ignored.
	e.raw(initPacket(other, ctaphid.CmdPing, 100, pattern(57)))
	f, err = e.client.RecvOn(other)
	if err != nil {
		t.Fatal(err)
	}
	expectError(t, f, other, ctaphid.ErrChannelBusy)
	e.raw(contPacket(other, 0, pattern(100)[57:]))
	e.raw(contPacket(a, 0, pattern(100)[57:]))
	// The very next frame on the wire must be a's answer, not another
	// refusal for other.
	f, err = e.client.Recv()
	if err != nil {
		t.Fatal(err)
	}
	if f.CID != a || f.Cmd != ctaphid.CmdPing || !bytes.Equal(f.Payload, pattern(100)) {
		t.Fatalf("after a refused message: frame on 0x%08x cmd 0x%02x len %d, want a's PING", f.CID, f.Cmd, len(f.Payload))
	}
	// Nothing else is queued for other: its next request gets its answer.
	if f := e.transact(other, ctaphid.CmdPing, []byte{7}); f.Cmd != ctaphid.CmdPing || !bytes.Equal(f.Payload, []byte{7}) {
		t.Fatalf("PING after a refused message: cmd 0x%02x % x", f.Cmd, f.Payload)
	}
}

func TestCancel(t *testing.T) {
	for _, tc := range []struct {
		name string
		ret  func(context.Context) ([]byte, error)
	}{
		{"handler returns ctx error", nil},
		{"handler returns a response", func(context.Context) ([]byte, error) { return []byte{0x00, 0xA0}, nil }},
		{"handler returns a status", func(context.Context) ([]byte, error) { return nil, ctap.StatusOperationDenied }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := newBlocker()
			b.ret = tc.ret
			e := start(t, b, ctaphid.Config{}, nil)
			cid := e.init()
			if err := e.client.Send(cid, ctaphid.CmdCBOR, []byte{0x01, 0xA0}); err != nil {
				t.Fatal(err)
			}
			<-b.started
			if err := e.client.Send(cid, ctaphid.CmdCancel, nil); err != nil {
				t.Fatal(err)
			}
			f, err := e.client.RecvOn(cid)
			if err != nil {
				t.Fatal(err)
			}
			if f.Cmd != ctaphid.CmdCBOR || !bytes.Equal(f.Payload, []byte{byte(ctap.StatusKeepaliveCancel)}) {
				t.Fatalf("after CANCEL: cmd 0x%02x % x, want CBOR 2d", f.Cmd, f.Payload)
			}
		})
	}
}

func TestCancelOtherChannelIgnored(t *testing.T) {
	b := newBlocker()
	e := start(t, b, ctaphid.Config{}, nil)
	a, other := e.init(), e.init()
	if err := e.client.Send(a, ctaphid.CmdCBOR, []byte{0x01}); err != nil {
		t.Fatal(err)
	}
	<-b.started
	if err := e.client.Send(other, ctaphid.CmdCancel, nil); err != nil {
		t.Fatal(err)
	}
	b.release <- []byte{0x00}
	f, err := e.client.RecvOn(a)
	if err != nil {
		t.Fatal(err)
	}
	if f.Cmd != ctaphid.CmdCBOR || !bytes.Equal(f.Payload, []byte{0}) {
		t.Fatalf("got cmd 0x%02x % x, want the handler's answer", f.Cmd, f.Payload)
	}
}

func TestInitAbortsTransaction(t *testing.T) {
	b := newBlocker()
	e := start(t, b, ctaphid.Config{}, nil)
	cid := e.init()
	if err := e.client.Send(cid, ctaphid.CmdCBOR, []byte{0x01}); err != nil {
		t.Fatal(err)
	}
	<-b.started
	nonce := pattern(8)
	f := e.transact(cid, ctaphid.CmdInit, nonce)
	if f.Cmd != ctaphid.CmdInit || binary.BigEndian.Uint32(f.Payload[8:12]) != cid {
		t.Fatalf("INIT on channel: cmd 0x%02x % x", f.Cmd, f.Payload)
	}
	// The aborted request produces no response: the next message on the
	// channel is the PING echo (retried while the handler drains).
	for {
		f = e.transact(cid, ctaphid.CmdPing, []byte("after"))
		if f.Cmd == ctaphid.CmdError && f.Payload[0] == ctaphid.ErrChannelBusy {
			time.Sleep(time.Millisecond)
			continue
		}
		break
	}
	if f.Cmd != ctaphid.CmdPing || string(f.Payload) != "after" {
		t.Fatalf("after resync: cmd 0x%02x % x", f.Cmd, f.Payload)
	}
}

func TestHandlerErrors(t *testing.T) {
	var ret error
	h := ctap.HandlerFunc(func(ctx context.Context, req ctap.Request) ([]byte, error) { return nil, ret })
	e := start(t, h, ctaphid.Config{}, nil)
	cid := e.init()
	ret = errors.New("tpm on fire")
	expectError(t, e.transact(cid, ctaphid.CmdCBOR, []byte{1}), cid, ctaphid.ErrOther)
	ret = ctap.StatusPINInvalid
	if f := e.transact(cid, ctaphid.CmdCBOR, []byte{1}); f.Cmd != ctaphid.CmdCBOR || !bytes.Equal(f.Payload, []byte{0x31}) {
		t.Errorf("status error: cmd 0x%02x % x", f.Cmd, f.Payload)
	}
	expectError(t, e.transact(cid, ctaphid.CmdMsg, []byte{1}), cid, ctaphid.ErrOther)
}

// The handler is told which channel asks, so state a command leaves
// behind can belong to its caller.
func TestHandlerSeesChannel(t *testing.T) {
	got := make(chan ctap.Request, 1)
	h := ctap.HandlerFunc(func(ctx context.Context, req ctap.Request) ([]byte, error) {
		got <- req
		return []byte{0}, nil
	})
	e := start(t, h, ctaphid.Config{}, nil)
	a, b := e.init(), e.init()
	for _, tc := range []struct {
		cid     uint32
		cmd     byte
		payload []byte
	}{{a, ctaphid.CmdCBOR, []byte{0x08}}, {b, ctaphid.CmdCBOR, []byte{0x08}}, {b, ctaphid.CmdMsg, []byte{0, 3, 0, 0}}} {
		e.transact(tc.cid, tc.cmd, tc.payload)
		r := <-got
		if r.CID != tc.cid || r.Cmd != tc.cmd || !bytes.Equal(r.Payload, tc.payload) {
			t.Errorf("handler got CID %08x cmd 0x%02x % x, want %08x 0x%02x % x", r.CID, r.Cmd, r.Payload, tc.cid, tc.cmd, tc.payload)
		}
	}
}

// A CBOR message needs at least its command byte: BCNT 0 is a framing
// error, answered by the transport with ERR_INVALID_LEN (§11.2.9.1.2),
// and no request starts. An empty MSG still goes to the handler, whose
// APDU parser owns that answer.
func TestEmptyCBORMessage(t *testing.T) {
	got := make(chan ctap.Request, 4)
	h := ctap.HandlerFunc(func(ctx context.Context, req ctap.Request) ([]byte, error) {
		got <- req
		return []byte{0x67, 0x00}, nil
	})
	e := start(t, h, ctaphid.Config{}, nil)
	cid := e.init()
	expectError(t, e.transact(cid, ctaphid.CmdCBOR, nil), cid, ctaphid.ErrInvalidLen)
	select {
	case r := <-got:
		t.Fatalf("handler called for an empty CBOR message: %+v", r)
	default:
	}
	// The channel is free at once: no request was left outstanding.
	if f := e.transact(cid, ctaphid.CmdPing, []byte("x")); f.Cmd != ctaphid.CmdPing {
		t.Fatalf("PING after the empty CBOR message: cmd 0x%02x % x", f.Cmd, f.Payload)
	}
	if f := e.transact(cid, ctaphid.CmdMsg, nil); f.Cmd != ctaphid.CmdMsg {
		t.Fatalf("empty MSG: cmd 0x%02x % x", f.Cmd, f.Payload)
	}
	if r := <-got; r.Cmd != ctaphid.CmdMsg || len(r.Payload) != 0 {
		t.Fatalf("handler got %+v for the empty MSG", r)
	}
}

func TestMuxAnswers(t *testing.T) {
	e := start(t, &ctap.Mux{}, ctaphid.Config{}, nil)
	cid := e.init()
	if f := e.transact(cid, ctaphid.CmdCBOR, []byte{0x04}); f.Cmd != ctaphid.CmdCBOR || !bytes.Equal(f.Payload, []byte{0x01}) {
		t.Errorf("CBOR: cmd 0x%02x % x", f.Cmd, f.Payload)
	}
	if f := e.transact(cid, ctaphid.CmdMsg, []byte{0, 3, 0, 0}); f.Cmd != ctaphid.CmdMsg || !bytes.Equal(f.Payload, []byte{0x6D, 0x00}) {
		t.Errorf("MSG: cmd 0x%02x % x", f.Cmd, f.Payload)
	}
}

func TestWinkAndLock(t *testing.T) {
	winks := 0
	e := start(t, nil, ctaphid.Config{Wink: func() { winks++ }}, nil)
	a, other := e.init(), e.init()
	if f := e.transact(a, ctaphid.CmdWink, nil); f.Cmd != ctaphid.CmdWink || len(f.Payload) != 0 {
		t.Errorf("WINK: cmd 0x%02x % x", f.Cmd, f.Payload)
	}
	expectError(t, e.transact(a, ctaphid.CmdLock, []byte{11}), a, ctaphid.ErrInvalidPar)
	expectError(t, e.transact(a, ctaphid.CmdLock, nil), a, ctaphid.ErrInvalidLen)
	if f := e.transact(a, ctaphid.CmdLock, []byte{5}); f.Cmd != ctaphid.CmdLock {
		t.Fatalf("LOCK: cmd 0x%02x % x", f.Cmd, f.Payload)
	}
	expectError(t, e.transact(other, ctaphid.CmdPing, []byte{1}), other, ctaphid.ErrChannelBusy)
	if f := e.transact(a, ctaphid.CmdPing, []byte{1}); f.Cmd != ctaphid.CmdPing {
		t.Errorf("PING by lock holder: cmd 0x%02x", f.Cmd)
	}
	if f := e.transact(a, ctaphid.CmdLock, []byte{0}); f.Cmd != ctaphid.CmdLock {
		t.Fatalf("unlock: cmd 0x%02x", f.Cmd)
	}
	if f := e.transact(other, ctaphid.CmdPing, []byte{1}); f.Cmd != ctaphid.CmdPing {
		t.Errorf("PING after unlock: cmd 0x%02x", f.Cmd)
	}
	e.stop()
	if winks != 1 {
		t.Errorf("wink callback ran %d times, want 1", winks)
	}
}

// TestKeepalive checks that KEEPALIVE frames with the handler's status
// keep coming while it waits. It counts frames instead of timing them
// (a loaded machine stretches any interval): the handler is released
// after the fifth frame, or after 10 s, when the test fails.
func TestKeepalive(t *testing.T) {
	const want = 5
	b := newBlocker()
	b.status = ctap.KeepaliveUPNeeded
	e := start(t, b, ctaphid.Config{}, nil)
	cid := e.init()
	var frames []ctaphidtest.Frame
	var release sync.Once
	free := func() { release.Do(func() { go func() { b.release <- []byte{0} }() }) }
	e.client.OnKeepalive = func(f ctaphidtest.Frame) {
		frames = append(frames, f)
		if len(frames) == want {
			free()
		}
	}
	if err := e.client.Send(cid, ctaphid.CmdCBOR, []byte{0x01}); err != nil {
		t.Fatal(err)
	}
	<-b.started
	backstop := time.AfterFunc(10*time.Second, free)
	defer backstop.Stop()
	f, err := e.client.RecvOn(cid)
	if err != nil {
		t.Fatal(err)
	}
	if f.Cmd != ctaphid.CmdCBOR {
		t.Fatalf("response cmd 0x%02x", f.Cmd)
	}
	if len(frames) < want {
		t.Fatalf("got %d KEEPALIVE frames in 10 s, want at least %d", len(frames), want)
	}
	for _, k := range frames {
		if len(k.Payload) != 1 || k.Payload[0] != byte(ctap.KeepaliveUPNeeded) {
			t.Errorf("KEEPALIVE payload % x, want 02", k.Payload)
		}
	}
	if ctaphid.DefaultKeepaliveInterval >= 100*time.Millisecond {
		t.Errorf("DefaultKeepaliveInterval %v is not below 100ms", ctaphid.DefaultKeepaliveInterval)
	}
}

func TestManyInits(t *testing.T) {
	const n = 100000
	e := start(t, nil, ctaphid.Config{}, nil)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	seen := make(map[uint32]bool, n)
	for i := 0; i < n; i++ {
		cid, err := e.client.Init()
		if err != nil {
			t.Fatalf("INIT %d: %v", i, err)
		}
		if cid == 0 || cid == ctaphid.BroadcastCID || seen[cid] {
			t.Fatalf("INIT %d: channel %08x reserved or reused", i, cid)
		}
		seen[cid] = true
	}
	e.stop()
	seen = nil
	runtime.GC()
	runtime.ReadMemStats(&after)
	if next, wrapped := e.srv.NextCID(); next != n+1 || wrapped {
		t.Errorf("counter at %d (wrapped %v), want %d", next, wrapped, n+1)
	}
	// The server keeps no per-channel state; live heap must not grow
	// with the number of channels (100,000 table entries would be MBs).
	if grow := int64(after.HeapAlloc) - int64(before.HeapAlloc); grow > 1<<20 {
		t.Errorf("live heap grew by %d bytes over %d INITs", grow, n)
	}
}

func TestChannelWrap(t *testing.T) {
	e := start(t, nil, ctaphid.Config{}, func(s *ctaphid.Server) { s.SetNextCID(0xFFFFFFFD) })
	var got []uint32
	for i := 0; i < 4; i++ {
		got = append(got, e.init())
	}
	want := []uint32{0xFFFFFFFD, 0xFFFFFFFE, 1, 2}
	for i := range want {
		if got[i] != want[i] {
			t.Fatalf("channels %08x, want %08x", got, want)
		}
	}
	// After the wrap every non-reserved id counts as allocated.
	if f := e.transact(0x7000_0000, ctaphid.CmdPing, []byte{1}); f.Cmd != ctaphid.CmdPing {
		t.Errorf("PING after wrap: cmd 0x%02x", f.Cmd)
	}
}

func TestShortReportsIgnored(t *testing.T) {
	e := start(t, nil, ctaphid.Config{}, nil)
	cid := e.init()
	if err := e.host.WriteReport([]byte{1, 2}); err != nil {
		t.Fatal(err)
	}
	if f := e.transact(cid, ctaphid.CmdPing, []byte("y")); f.Cmd != ctaphid.CmdPing {
		t.Errorf("PING after short report: cmd 0x%02x", f.Cmd)
	}
}

func TestServeStopsOnClose(t *testing.T) {
	pipe := ctaphidtest.NewPipe()
	srv := ctaphid.NewServer(pipe.Device(), &ctap.Mux{}, ctaphid.Config{Logger: testLogger(t)})
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(context.Background()) }()
	pipe.Close()
	select {
	case err := <-errc:
		if err != nil {
			t.Fatalf("Serve after close: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Serve did not return after the device closed")
	}
}
