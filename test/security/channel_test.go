package security_test

import (
	"context"
	"encoding/binary"
	"testing"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
)

// blockUntilCancelled makes the prompt wait for the client's cancel and
// signals entered when it starts waiting.
func blockUntilCancelled(entered chan<- struct{}) func(context.Context) error {
	return func(ctx context.Context) error {
		entered <- struct{}{}
		<-ctx.Done()
		return ctx.Err()
	}
}

func waitEntered(t *testing.T, entered <-chan struct{}) {
	t.Helper()
	select {
	case <-entered:
	case <-time.After(10 * time.Second):
		t.Fatal("the prompt was never shown")
	}
}

// A CANCEL on channel A ends A's request; channel B, refused with
// CHANNEL_BUSY while A's transaction runs, succeeds after it.
func TestCancelOnOneChannelOnly(t *testing.T) {
	e := newEnv(t, envOpts{})
	a, b := e.channel(), e.channel()
	id := makeCred(t, a, "a.example")
	entered := make(chan struct{}, 1)
	e.prompt.set(blockUntilCancelled(entered))

	if err := e.client.Send(a.CID, ctaphid.CmdCBOR, cborReq(t, ctaphidtest.CmdGetAssertion, ctaphidtest.GetAssertionParams("a.example", cdh("g"), true, id))); err != nil {
		t.Fatal(err)
	}
	waitEntered(t, entered)
	if _, _, err := b.Call(ctaphidtest.CmdGetInfo, nil); err != ctaphidtest.ErrBusy {
		t.Fatalf("B during A's transaction: err = %v, want CHANNEL_BUSY", err)
	}
	if err := e.client.Send(a.CID, ctaphid.CmdCancel, nil); err != nil {
		t.Fatal(err)
	}
	f, err := e.client.RecvOn(a.CID)
	if err != nil {
		t.Fatal(err)
	}
	if f.Cmd != ctaphid.CmdCBOR || len(f.Payload) != 1 || ctap.Status(f.Payload[0]) != ctap.StatusKeepaliveCancel {
		t.Fatalf("A after CANCEL: cmd 0x%02x % x, want CBOR KEEPALIVE_CANCEL", f.Cmd, f.Payload)
	}
	e.prompt.set(nil)
	if err := retryBusy(func() error {
		_, err := b.GetAssertion(ctaphidtest.GetAssertionParams("a.example", cdh("g"), true, id))
		return err
	}); err != nil {
		t.Fatalf("B after A's cancel: %v", err)
	}
}

// A CANCEL sent on channel A while channel B's request waits for the
// user does not touch B's request.
func TestCancelDoesNotReachOtherChannel(t *testing.T) {
	e := newEnv(t, envOpts{})
	a, b := e.channel(), e.channel()
	id := makeCred(t, b, "a.example")
	entered := make(chan struct{}, 1)
	release := make(chan struct{})
	e.prompt.set(func(ctx context.Context) error {
		entered <- struct{}{}
		select {
		case <-release:
			return nil
		case <-ctx.Done():
			return ctx.Err()
		}
	})
	if err := e.client.Send(b.CID, ctaphid.CmdCBOR, cborReq(t, ctaphidtest.CmdGetAssertion, ctaphidtest.GetAssertionParams("a.example", cdh("g"), true, id))); err != nil {
		t.Fatal(err)
	}
	waitEntered(t, entered)
	for range 3 {
		if err := e.client.Send(a.CID, ctaphid.CmdCancel, nil); err != nil {
			t.Fatal(err)
		}
	}
	close(release)
	f, err := e.client.RecvOn(b.CID)
	if err != nil {
		t.Fatal(err)
	}
	if f.Cmd != ctaphid.CmdCBOR || len(f.Payload) < 2 || ctap.Status(f.Payload[0]) != ctap.StatusOK {
		t.Fatalf("B after a CANCEL on A: cmd 0x%02x status % x, want a CBOR OK", f.Cmd, f.Payload[:min(len(f.Payload), 1)])
	}
}

// A message whose INIT packet announces more than the maximum message
// size is refused with ERR_INVALID_LEN, and the channel still works.
func TestOversizedMessageRefused(t *testing.T) {
	e := newEnv(t, envOpts{})
	ch := e.channel()
	pkt := make([]byte, ctaphid.ReportSize)
	binary.BigEndian.PutUint32(pkt, ch.CID)
	pkt[4] = 0x80 | ctaphid.CmdCBOR
	binary.BigEndian.PutUint16(pkt[5:], ctaphid.MaxMessageSize+1)
	pkt[7] = ctaphidtest.CmdGetInfo
	if ctaphid.MaxMessageSize+1 != 7610 {
		t.Fatalf("MaxMessageSize = %d, the CTAPHID limit for 64-byte reports is 7609", ctaphid.MaxMessageSize)
	}
	if err := e.client.Conn.WriteReport(pkt); err != nil {
		t.Fatal(err)
	}
	f, err := e.client.RecvOn(ch.CID)
	if err != nil {
		t.Fatal(err)
	}
	if f.Cmd != ctaphid.CmdError || len(f.Payload) != 1 || f.Payload[0] != ctaphid.ErrInvalidLen {
		t.Fatalf("7610-byte announcement: cmd 0x%02x % x, want ERROR INVALID_LEN", f.Cmd, f.Payload)
	}
	if _, _, err := ch.Call(ctaphidtest.CmdGetInfo, nil); err != nil {
		t.Fatalf("getInfo afterwards: %v", err)
	}
}

// A client that stops halfway through a message holds the device only
// until the continuation timeout; then other channels are served.
func TestStalledClientDoesNotBlockOthers(t *testing.T) {
	e := newEnv(t, envOpts{})
	a, b := e.channel(), e.channel()
	// The first packet of a 300-byte message, then silence.
	pkts := ctaphid.EncodeMessage(a.CID, ctaphid.CmdPing, make([]byte, 300))
	if err := e.client.Conn.WriteReport(pkts[0]); err != nil {
		t.Fatal(err)
	}
	busy := 0
	deadline := time.Now().Add(20 * time.Second)
	for {
		_, _, err := b.Call(ctaphidtest.CmdGetInfo, nil)
		if err == nil {
			break
		}
		if err != ctaphidtest.ErrBusy {
			t.Fatalf("B: %v", err)
		}
		busy++
		if time.Now().After(deadline) {
			t.Fatalf("B still CHANNEL_BUSY after %d tries: the stalled channel blocks the device", busy)
		}
		time.Sleep(20 * time.Millisecond)
	}
	if busy == 0 {
		t.Errorf("B was served while A's message was incomplete (expected CHANNEL_BUSY first; one transaction at a time)")
	}
	t.Logf("B got CHANNEL_BUSY %d times, then was served", busy)
}

func cborReq(t *testing.T, cmd byte, params any) []byte {
	t.Helper()
	b, err := ctaphidtest.Encode(params)
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte{cmd}, b...)
}

// retryBusy retries f while the device answers CHANNEL_BUSY.
func retryBusy(f func() error) error {
	for i := 0; ; i++ {
		err := f()
		if err != ctaphidtest.ErrBusy || i > 500 {
			return err
		}
		time.Sleep(10 * time.Millisecond)
	}
}
