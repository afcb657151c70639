package main

import (
	"bytes"
	"crypto/rand"
	"fmt"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
)

// touchDelay is the --presence allow-after delay the waiting tests use:
// long enough for many keepalives and for other clients to be turned away.
const touchDelay = 1500 * time.Millisecond

// cmdSelection is authenticatorSelection (CTAP 2.1 §6.9): it only asks
// for a touch, so the request waits for the presence answer.
const cmdSelection = 0x0B

// TestWaitingForTouch runs the real daemon with --presence
// allow-after:1.5s over each test transport and checks, while a request
// waits for the touch, what conformance tools check: KEEPALIVE with
// STATUS_UPNEEDED at least every 100 ms on the waiting channel, ERROR
// CHANNEL_BUSY for requests on other channels, and CTAPHID_CANCEL
// answered with CTAP2_ERR_KEEPALIVE_CANCEL.
func TestWaitingForTouch(t *testing.T) {
	args := func() []string {
		return append(serveTestArgs(t), "--presence", "allow-after:"+touchDelay.String(), "--prompt-timeout", "10s")
	}
	t.Run("unix", func(t *testing.T) {
		sock := filepath.Join(t.TempDir(), "run", "s")
		startDaemon(t, append([]string{"--transport", "unix:" + sock}, args()...)...)
		dial := func() *ctaphidtest.Client {
			c, err := ctaphidtest.DialUnix(sock, 10*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { c.Close() })
			return c
		}
		// Two connections: two programs with the device open.
		checkWaiting(t, dial(), dial())
	})
	t.Run("udp", func(t *testing.T) {
		spec, c, err := ctaphidtest.LoopbackUDP(10 * time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		startDaemon(t, append([]string{"--transport", spec}, args()...)...)
		// UDP has one reply address: both channels share the socket.
		checkWaiting(t, c, c)
	})
}

func checkWaiting(t *testing.T, a, b *ctaphidtest.Client) {
	t.Helper()
	cidA, err := a.Init()
	if err != nil {
		t.Fatalf("INIT A: %v", err)
	}
	cidB, err := b.Init()
	if err != nil {
		t.Fatalf("INIT B: %v", err)
	}

	// A asks for a touch; while it waits, B is turned away.
	start := time.Now()
	if err := a.Send(cidA, ctaphid.CmdCBOR, []byte{cmdSelection}); err != nil {
		t.Fatal(err)
	}
	var keepalives []ctaphidtest.Frame
	first, err := recvKeepalive(a, cidA)
	if err != nil {
		t.Fatalf("no KEEPALIVE while waiting for the touch: %v", err)
	}
	keepalives = append(keepalives, first)
	busy := func(c *ctaphidtest.Client, cid uint32, cmd byte, payload []byte, what string) {
		t.Helper()
		if err := c.Send(cid, cmd, payload); err != nil {
			t.Fatal(err)
		}
		for {
			f, err := c.Recv()
			if err != nil {
				t.Fatalf("%s: %v", what, err)
			}
			switch {
			case f.CID == cidA && f.Cmd == ctaphid.CmdKeepalive:
				if c == a { // else a reads it on its own connection too
					keepalives = append(keepalives, f)
				}
				continue
			case f.CID != cid:
				t.Fatalf("%s: unexpected cid %08x cmd 0x%02x % x", what, f.CID, f.Cmd, f.Payload)
			case f.Cmd != ctaphid.CmdError || !bytes.Equal(f.Payload, []byte{ctaphid.ErrChannelBusy}):
				t.Fatalf("%s: cmd 0x%02x % x, want ERROR CHANNEL_BUSY", what, f.Cmd, f.Payload)
			}
			return
		}
	}
	busy(b, cidB, ctaphid.CmdPing, []byte("hello"), "PING on another channel")
	busy(b, cidB, ctaphid.CmdCBOR, []byte{0x04}, "getInfo on another channel")
	busy(b, cidB, ctaphid.CmdMsg, []byte{0, 3, 0, 0, 0, 0, 0, 0, 0}, "U2F VERSION on another channel")

	// A's own answer comes after the delay, keepalives until then.
	var resp ctaphidtest.Frame
	for {
		f, err := a.Recv()
		if err != nil {
			t.Fatalf("waiting for the selection answer: %v", err)
		}
		if f.CID != cidA {
			continue
		}
		if f.Cmd == ctaphid.CmdKeepalive {
			keepalives = append(keepalives, f)
			continue
		}
		resp = f
		break
	}
	waited := time.Since(start)
	if resp.Cmd != ctaphid.CmdCBOR || !bytes.Equal(resp.Payload, []byte{byte(ctap.StatusOK)}) {
		t.Fatalf("selection: cmd 0x%02x % x, want CBOR 00", resp.Cmd, resp.Payload)
	}
	if waited < touchDelay {
		t.Fatalf("selection answered after %v, before the %v touch delay", waited, touchDelay)
	}
	// The keepalives say PROCESSING, then UPNEEDED while the touch is
	// awaited, then PROCESSING again once it came; they keep coming at
	// the ≤ 100 ms pace the spec asks (the median gap, so that one
	// scheduling hiccup on a loaded host does not fail the test).
	var (
		gaps     []time.Duration
		statuses []byte
		upNeeded int
	)
	for i, k := range keepalives {
		if len(k.Payload) != 1 {
			t.Fatalf("KEEPALIVE % x", k.Payload)
		}
		statuses = append(statuses, k.Payload[0])
		if k.Payload[0] == byte(ctap.KeepaliveUPNeeded) {
			upNeeded++
		}
		if i > 0 {
			gaps = append(gaps, k.At.Sub(keepalives[i-1].At))
		}
	}
	if !keepalivePhases(statuses) {
		t.Errorf("KEEPALIVE statuses %v, want PROCESSING*, UPNEEDED+, PROCESSING*", statuses)
	}
	if upNeeded < 5 {
		t.Fatalf("%d KEEPALIVE(UPNEEDED) in %v", upNeeded, waited)
	}
	slices.Sort(gaps)
	median, largest := gaps[len(gaps)/2], gaps[len(gaps)-1]
	t.Logf("waited %v for the touch: %d KEEPALIVE frames, %d of them UPNEEDED, median gap %v, largest %v",
		waited.Round(time.Millisecond), len(keepalives), upNeeded, median.Round(time.Millisecond/10), largest.Round(time.Millisecond/10))
	if median > 100*time.Millisecond {
		t.Errorf("median keepalive gap %v, want ≤ 100 ms", median)
	}

	// CANCEL while waiting: KEEPALIVE_CANCEL, and the channel works after.
	// (A makeCredential: a second selection right after the first would
	// be answered by the approval just given, which is reused once.)
	start = time.Now()
	if err := a.Send(cidA, ctaphid.CmdCBOR, makeCredentialRequest(t)); err != nil {
		t.Fatal(err)
	}
	if _, err := recvKeepalive(a, cidA); err != nil {
		t.Fatalf("no KEEPALIVE before CANCEL: %v", err)
	}
	if err := a.Send(cidA, ctaphid.CmdCancel, nil); err != nil {
		t.Fatal(err)
	}
	f, err := a.RecvOn(cidA)
	if err != nil {
		t.Fatalf("after CANCEL: %v", err)
	}
	if f.Cmd != ctaphid.CmdCBOR || !bytes.Equal(f.Payload, []byte{byte(ctap.StatusKeepaliveCancel)}) {
		t.Fatalf("after CANCEL: cmd 0x%02x % x, want CBOR 2d (KEEPALIVE_CANCEL)", f.Cmd, f.Payload)
	}
	t.Logf("CANCEL answered with KEEPALIVE_CANCEL %v after the request", time.Since(start).Round(time.Millisecond))
	if f, err := b.Transact(cidB, ctaphid.CmdPing, []byte("after")); err != nil || f.Cmd != ctaphid.CmdPing {
		t.Fatalf("PING on B after the cancel: %v cmd 0x%02x % x", err, f.Cmd, f.Payload)
	}
}

// keepalivePhases reports whether statuses are some PROCESSING, then at
// least one UPNEEDED, then some PROCESSING.
func keepalivePhases(statuses []byte) bool {
	p, u := byte(ctap.KeepaliveProcessing), byte(ctap.KeepaliveUPNeeded)
	i := 0
	for i < len(statuses) && statuses[i] == p {
		i++
	}
	j := i
	for j < len(statuses) && statuses[j] == u {
		j++
	}
	if j == i {
		return false
	}
	for j < len(statuses) && statuses[j] == p {
		j++
	}
	return j == len(statuses)
}

// recvKeepalive reads until a KEEPALIVE on cid.
func recvKeepalive(c *ctaphidtest.Client, cid uint32) (ctaphidtest.Frame, error) {
	for {
		f, err := c.Recv()
		if err != nil {
			return f, err
		}
		if f.CID != cid {
			continue
		}
		if f.Cmd != ctaphid.CmdKeepalive {
			return f, fmt.Errorf("answer cmd 0x%02x % x instead of a KEEPALIVE", f.Cmd, f.Payload)
		}
		return f, nil
	}
}

// makeCredentialRequest is a minimal authenticatorMakeCredential (ES256,
// example.org) with a random clientDataHash.
func makeCredentialRequest(t *testing.T) []byte {
	t.Helper()
	cdh := make([]byte, 32)
	rand.Read(cdh)
	enc, err := cbor.CTAP2EncOptions().EncMode()
	if err != nil {
		t.Fatal(err)
	}
	b, err := enc.Marshal(map[int]any{
		1: cdh,
		2: map[string]any{"id": "example.org"},
		3: map[string]any{"id": []byte{1, 2, 3}, "name": "alice"},
		4: []map[string]any{{"type": "public-key", "alg": -7}},
	})
	if err != nil {
		t.Fatal(err)
	}
	return append([]byte{0x01}, b...)
}
