package ctap2test

import (
	"bytes"
	"context"
	"sync"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/tpm-fido/tpm-fido/ctap"
)

// Handler is what a Caller drives: a CTAP2 authenticator (ctap2's
// *Authenticator) in process.
type Handler interface {
	Handle(ctx context.Context, r ctap.Request) ([]byte, error)
}

// Caller sends CTAP2 requests to a Handler as CTAPHID would on channel
// CID, and checks every answer as a strict client would: a status byte,
// no body with an error, at most 4096 bytes for makeCredential and 2048
// for anything else (libfido2's limits), a body that is one CBOR map with
// integer keys in CTAP2 canonical form. A failed check fails T.
type Caller struct {
	T   testing.TB
	H   Handler
	CID uint32
}

// Call encodes params (nil: none) after the command byte and sends it.
func (c *Caller) Call(cmd byte, params any) (ctap.Status, map[int]cbor.RawMessage) {
	c.T.Helper()
	req := []byte{cmd}
	if params != nil {
		req = append(req, Encode(c.T, params)...)
	}
	return c.CallRaw(req)
}

// CallRaw sends req as it is.
func (c *Caller) CallRaw(req []byte) (ctap.Status, map[int]cbor.RawMessage) {
	c.T.Helper()
	return c.CallRawCtx(context.Background(), req)
}

// CallRawCtx sends req with ctx (a cancelled ctx is CTAPHID_CANCEL).
func (c *Caller) CallRawCtx(ctx context.Context, req []byte) (ctap.Status, map[int]cbor.RawMessage) {
	c.T.Helper()
	resp, err := c.H.Handle(ctx, ctap.Request{CID: c.CID, Cmd: ctap.CmdCBOR, Payload: req})
	if err != nil {
		c.T.Fatalf("Handle error: %v", err)
	}
	if len(resp) == 0 {
		c.T.Fatal("empty response")
	}
	st := ctap.Status(resp[0])
	limit := 2048
	if len(req) > 0 && req[0] == 0x01 { // makeCredential
		limit = 4096
	}
	if len(resp) > limit {
		c.T.Fatalf("response of %d bytes exceeds %d", len(resp), limit)
	}
	if st != ctap.StatusOK {
		if len(resp) != 1 {
			c.T.Fatalf("error %v with a body of %d bytes", st, len(resp)-1)
		}
		return st, nil
	}
	body := resp[1:]
	if len(body) == 0 {
		return st, nil
	}
	CheckCanonical(c.T, body)
	var m map[int]cbor.RawMessage
	if err := StrictDec.Unmarshal(body, &m); err != nil {
		c.T.Fatalf("response is not a CBOR map with integer keys: %v", err)
	}
	return st, m
}

// Enc encodes requests as a platform must: CTAP2 canonical CBOR.
var Enc, _ = cbor.CTAP2EncOptions().EncMode()

// StrictDec decodes responses strictly, so that indefinite lengths and
// duplicate keys in the authenticator's output are caught.
var StrictDec, _ = cbor.DecOptions{
	DupMapKey:   cbor.DupMapKeyEnforcedAPF,
	IndefLength: cbor.IndefLengthForbidden,
	IntDec:      cbor.IntDecConvertNone,
}.DecMode()

// Encode is Enc.Marshal that fails t on error.
func Encode(t testing.TB, v any) []byte {
	t.Helper()
	b, err := Enc.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// CheckCanonical decodes b into generic values and re-encodes them in
// CTAP2 canonical form: the bytes must be identical.
func CheckCanonical(t testing.TB, b []byte) {
	t.Helper()
	var v any
	if err := StrictDec.Unmarshal(b, &v); err != nil {
		t.Fatalf("malformed CBOR output: %v", err)
	}
	again, err := Enc.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, b) {
		t.Fatalf("CBOR output is not canonical:\n got % x\nwant % x", b, again)
	}
}

// Field decodes key k of a response map into a T; a missing key or
// another type fails t.
func Field[T any](t testing.TB, m map[int]cbor.RawMessage, k int) T {
	t.Helper()
	var v T
	r, ok := m[k]
	if !ok {
		t.Fatalf("response lacks key %d", k)
	}
	if err := StrictDec.Unmarshal(r, &v); err != nil {
		t.Fatalf("key %d: %v", k, err)
	}
	return v
}

// WantStatus fails t unless got is want.
func WantStatus(t testing.TB, what string, got, want ctap.Status) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: status %v, want %v", what, got, want)
	}
}

// Clock is a clock for injection (ctap2.Config.Now, pinuv.NewState) that
// moves only when told. Safe for concurrent use.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock returns a Clock showing t.
func NewClock(t time.Time) *Clock { return &Clock{t: t} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

// Advance moves the clock on by d.
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}
