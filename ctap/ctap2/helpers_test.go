package ctap2_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2/ctap2test"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/presence"
	"github.com/tpm-fido/tpm-fido/test/logbuf"
)

// Command bytes, written out here rather than taken from the package.
const (
	cMakeCredential   = 0x01
	cGetAssertion     = 0x02
	cGetInfo          = 0x04
	cClientPIN        = 0x06
	cReset            = 0x07
	cGetNextAssertion = 0x08
	cSelection        = 0x0B
)

// prompter records prompts and answers with answer (nil: approve).
type prompter struct {
	mu     sync.Mutex
	reqs   []presence.Request
	answer func(ctx context.Context, r presence.Request) error
}

func (p *prompter) Confirm(ctx context.Context, r presence.Request) error {
	p.mu.Lock()
	p.reqs = append(p.reqs, r)
	f := p.answer
	p.mu.Unlock()
	if f == nil {
		return nil
	}
	return f(ctx, r)
}

func (p *prompter) count() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.reqs)
}

func (p *prompter) last() presence.Request {
	p.mu.Lock()
	defer p.mu.Unlock()
	if len(p.reqs) == 0 {
		return presence.Request{Op: -1}
	}
	return p.reqs[len(p.reqs)-1]
}

type env struct {
	ctap2test.Caller // H is the authenticator
	t                testing.TB
	store            ctap2.Store
	fake             *ctap2test.FakeStore // nil with the TPM store
	prompt           *prompter
	clock            *ctap2test.Clock
	logs             *logbuf.Buffer
}

func newEnv(t testing.TB) *env {
	t.Helper()
	fake := ctap2test.NewFakeStore(4)
	e := newEnvWithStore(t, fake)
	e.fake = fake
	return e
}

// newEnvWithStore builds the authenticator on s; requests come on
// CTAPHID channel 1 (e.CID).
func newEnvWithStore(t testing.TB, s ctap2.Store) *env {
	t.Helper()
	e := &env{t: t, store: s, prompt: &prompter{},
		clock: ctap2test.NewClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)), logs: &logbuf.Buffer{}}
	a, err := ctap2.New(ctap2.Config{
		Store:    s,
		Presence: e.prompt,
		Logger:   slog.New(slog.NewTextHandler(e.logs, nil)),
		Now:      e.clock.Now,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.Caller = ctap2test.Caller{T: t, H: a, CID: 1}
	return e
}

// rawCallCtx sends one request with ctx and returns the status and the
// response map, checked by ctap2test.Caller.
func (e *env) rawCallCtx(ctx context.Context, req []byte) (ctap.Status, map[int]cbor.RawMessage) {
	e.t.Helper()
	return e.CallRawCtx(ctx, req)
}

func (e *env) rawCall(req []byte) (ctap.Status, map[int]cbor.RawMessage) {
	e.t.Helper()
	return e.CallRaw(req)
}

// call sends cmd with params (nil: none).
func (e *env) call(cmd byte, params map[int]any) (ctap.Status, map[int]cbor.RawMessage) {
	e.t.Helper()
	if params == nil {
		return e.CallRaw([]byte{cmd})
	}
	return e.Call(cmd, params)
}

var (
	enc            = ctap2test.Encode
	checkCanonical = ctap2test.CheckCanonical
	strictDec      = ctap2test.StrictDec
	wantStatus     = ctap2test.WantStatus
)

func field[T any](t testing.TB, m map[int]cbor.RawMessage, k int) T {
	t.Helper()
	return ctap2test.Field[T](t, m, k)
}

func cdh(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

// parsedAuthData is authenticatorData parsed independently (WebAuthn
// §6.1).
type parsedAuthData struct {
	rpIDHash [32]byte
	flags    byte
	counter  uint32
	aaguid   []byte
	credID   []byte
	pub      *ecdsa.PublicKey
	ext      map[string]any
	extRaw   []byte
}

func parseAuthData(t testing.TB, b []byte) parsedAuthData {
	t.Helper()
	var d parsedAuthData
	if len(b) < 37 {
		t.Fatalf("authData of %d bytes", len(b))
	}
	copy(d.rpIDHash[:], b[:32])
	d.flags = b[32]
	d.counter = binary.BigEndian.Uint32(b[33:37])
	rest := b[37:]
	if d.flags&0x40 != 0 {
		if len(rest) < 18 {
			t.Fatal("short attested credential data")
		}
		d.aaguid = rest[:16]
		n := int(binary.BigEndian.Uint16(rest[16:18]))
		rest = rest[18:]
		if len(rest) < n {
			t.Fatal("short credential ID")
		}
		d.credID, rest = rest[:n], rest[n:]
		var key map[int]any
		r, err := strictDec.UnmarshalFirst(rest, &key)
		if err != nil {
			t.Fatalf("credential public key: %v", err)
		}
		checkCanonical(t, rest[:len(rest)-len(r)])
		rest = r
		if key[1] != uint64(2) || key[3] != int64(-7) || key[-1] != uint64(1) || len(key) != 5 {
			t.Fatalf("COSE key %v", key)
		}
		x, _ := key[-2].([]byte)
		y, _ := key[-3].([]byte)
		pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), append(append([]byte{4}, x...), y...))
		if err != nil {
			t.Fatalf("credential public key: %v", err)
		}
		d.pub = pub
	}
	if d.flags&0x80 != 0 {
		if err := strictDec.Unmarshal(rest, &d.ext); err != nil {
			t.Fatalf("extensions: %v", err)
		}
		checkCanonical(t, rest)
		d.extRaw = rest
	} else if len(rest) != 0 {
		t.Fatalf("%d trailing bytes in authData", len(rest))
	}
	return d
}

// credential is what a test keeps of a made credential.
type credential struct {
	id      []byte
	pub     *ecdsa.PublicKey
	auth    parsedAuthData
	rawAuth []byte
}

type mcOpts struct {
	rp, user    string
	rk          bool
	credProtect int
	hmacSecret  bool
	exclude     [][]byte
	token       []byte // pinUvAuthToken, protocol 2
}

func mcRequest(o mcOpts, clientDataHash []byte) map[int]any {
	if o.rp == "" {
		o.rp = "example.org"
	}
	if o.user == "" {
		o.user = "alice"
	}
	req := map[int]any{
		1: clientDataHash,
		2: map[string]any{"id": o.rp, "name": "Example"},
		3: map[string]any{"id": []byte("uid-" + o.user), "name": o.user, "displayName": "User " + o.user},
		4: []map[string]any{{"type": "public-key", "alg": -7}},
	}
	if o.rk {
		req[7] = map[string]bool{"rk": true}
	}
	ext := map[string]any{}
	if o.credProtect != 0 {
		ext["credProtect"] = o.credProtect
	}
	if o.hmacSecret {
		ext["hmac-secret"] = true
	}
	if len(ext) > 0 {
		req[6] = ext
	}
	if len(o.exclude) > 0 {
		var l []map[string]any
		for _, id := range o.exclude {
			l = append(l, map[string]any{"type": "public-key", "id": id})
		}
		req[5] = l
	}
	if o.token != nil {
		req[8] = ctaphidtest.Authenticate(2, o.token, clientDataHash)
		req[9] = 2
	}
	return req
}

// makeCredential makes a credential, verifies the packed
// self-attestation independently and returns it.
func (e *env) makeCredential(o mcOpts) credential {
	e.t.Helper()
	h := cdh("mc " + o.user)
	st, m := e.call(cMakeCredential, mcRequest(o, h))
	wantStatus(e.t, "makeCredential", st, ctap.StatusOK)
	if len(m) != 3 {
		e.t.Fatalf("makeCredential response has %d keys", len(m))
	}
	if f := field[string](e.t, m, 1); f != "packed" {
		e.t.Fatalf("fmt %q", f)
	}
	ad := field[[]byte](e.t, m, 2)
	var att map[string]any
	if err := strictDec.Unmarshal(m[3], &att); err != nil {
		e.t.Fatal(err)
	}
	if len(att) != 2 || att["alg"] != int64(-7) {
		e.t.Fatalf("attStmt %v", att)
	}
	sig, _ := att["sig"].([]byte)
	d := parseAuthData(e.t, ad)
	if d.pub == nil {
		e.t.Fatal("no attested credential data")
	}
	digest := sha256.Sum256(append(append([]byte(nil), ad...), h...))
	if !ecdsa.VerifyASN1(d.pub, digest[:], sig) {
		e.t.Fatal("packed self-attestation signature does not verify")
	}
	rp := o.rp
	if rp == "" {
		rp = "example.org"
	}
	if d.rpIDHash != sha256.Sum256([]byte(rp)) {
		e.t.Fatal("rpIdHash wrong")
	}
	if d.flags&0x01 == 0 {
		e.t.Fatal("UP flag clear in makeCredential")
	}
	return credential{id: d.credID, pub: d.pub, auth: d, rawAuth: ad}
}

// assertion is a verified getAssertion response.
type assertion struct {
	credID []byte
	auth   parsedAuthData
	user   map[string]any
	count  int // numberOfCredentials, 0 when absent
}

// verifyAssertion checks the response's signature with pub (or, when
// pubs is given, the key of the credential it names).
func verifyAssertion(t testing.TB, m map[int]cbor.RawMessage, clientDataHash []byte, pubs map[string]*ecdsa.PublicKey) assertion {
	t.Helper()
	var as assertion
	var desc map[string]any
	if err := strictDec.Unmarshal(m[1], &desc); err != nil {
		t.Fatalf("credential descriptor: %v", err)
	}
	if desc["type"] != "public-key" || len(desc) != 2 {
		t.Fatalf("descriptor %v", desc)
	}
	as.credID, _ = desc["id"].([]byte)
	ad := field[[]byte](t, m, 2)
	sig := field[[]byte](t, m, 3)
	as.auth = parseAuthData(t, ad)
	pub := pubs[string(as.credID)]
	if pub == nil {
		t.Fatalf("assertion names an unknown credential")
	}
	digest := sha256.Sum256(append(append([]byte(nil), ad...), clientDataHash...))
	if !ecdsa.VerifyASN1(pub, digest[:], sig) {
		t.Fatal("assertion signature does not verify")
	}
	if _, ok := m[4]; ok {
		if err := strictDec.Unmarshal(m[4], &as.user); err != nil {
			t.Fatal(err)
		}
	}
	if _, ok := m[5]; ok {
		as.count = field[int](t, m, 5)
	}
	return as
}

func allowList(ids ...[]byte) []map[string]any {
	var l []map[string]any
	for _, id := range ids {
		l = append(l, map[string]any{"type": "public-key", "id": id})
	}
	return l
}

// platform is the platform side of the PIN/UV auth protocols
// (ctaphidtest.Session, written from the specification independently of
// package pinuv), talking to e.
type platform struct {
	e *env
	*ctaphidtest.Session
}

func (e *env) newPlatform(proto uint64) *platform {
	e.t.Helper()
	st, m := e.call(cClientPIN, map[int]any{1: proto, 2: 2})
	wantStatus(e.t, "getKeyAgreement", st, ctap.StatusOK)
	s, err := ctaphidtest.NewSession(proto, field[ctaphidtest.COSEKey](e.t, m, 1))
	if err != nil {
		e.t.Fatal(err)
	}
	return &platform{e: e, Session: s}
}

func (p *platform) decrypt(ct []byte) []byte {
	p.e.t.Helper()
	pt, err := p.Decrypt(ct)
	if err != nil {
		p.e.t.Fatal(err)
	}
	return pt
}

func (p *platform) setPIN(pin string) {
	p.e.t.Helper()
	st, _ := p.e.call(cClientPIN, ctaphidtest.SetPINRequest(p.Session, []byte(pin)))
	wantStatus(p.e.t, "setPIN", st, ctap.StatusOK)
}

// changePIN changes the PIN from cur to next (clientPIN 0x04).
func (p *platform) changePIN(cur, next string) ctap.Status {
	p.e.t.Helper()
	st, _ := p.e.call(cClientPIN, ctaphidtest.ChangePINRequest(p.Session, cur, next))
	return st
}

// token gets a pinUvAuthToken with permissions for rpID.
func (p *platform) token(pin string, perms uint8, rpID string) []byte {
	p.e.t.Helper()
	st, m := p.e.call(cClientPIN, ctaphidtest.TokenRequest(p.Session, pin, perms, rpID))
	wantStatus(p.e.t, "getPinUvAuthTokenUsingPinWithPermissions", st, ctap.StatusOK)
	return p.decrypt(field[[]byte](p.e.t, m, 2))
}

// failPrompt is a prompter answer that fails the test when a prompt is
// shown.
func failPrompt(t testing.TB) func(context.Context, presence.Request) error {
	return func(_ context.Context, r presence.Request) error {
		t.Errorf("unexpected prompt: %q", r.Message())
		return errors.New("unexpected prompt")
	}
}
