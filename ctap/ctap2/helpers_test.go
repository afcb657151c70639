package ctap2_test

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
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
	"github.com/tpm-fido/tpm-fido/presence"
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

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

// logBuf collects log output so tests can check what was logged.
type logBuf struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *logBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *logBuf) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

type env struct {
	t      testing.TB
	a      *ctap2.Authenticator
	store  ctap2.Store
	fake   *ctap2test.FakeStore // nil with the TPM store
	prompt *prompter
	clock  *clock
	logs   *logBuf
	cid    uint32 // CTAPHID channel the requests come on
}

func newEnv(t testing.TB) *env {
	t.Helper()
	fake := ctap2test.NewFakeStore(4)
	e := newEnvWithStore(t, fake)
	e.fake = fake
	return e
}

func newEnvWithStore(t testing.TB, s ctap2.Store) *env {
	t.Helper()
	e := &env{t: t, store: s, prompt: &prompter{}, cid: 1,
		clock: &clock{t: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)}, logs: &logBuf{}}
	a, err := ctap2.New(ctap2.Config{
		Store:    s,
		Presence: e.prompt,
		Logger:   slog.New(slog.NewTextHandler(e.logs, nil)),
		Now:      e.clock.now,
	})
	if err != nil {
		t.Fatal(err)
	}
	e.a = a
	return e
}

var testEnc, _ = cbor.CTAP2EncOptions().EncMode()

// strictDec decodes responses strictly, so that non-canonical or
// duplicate-key output is caught.
var strictDec, _ = cbor.DecOptions{
	DupMapKey:   cbor.DupMapKeyEnforcedAPF,
	IndefLength: cbor.IndefLengthForbidden,
	IntDec:      cbor.IntDecConvertNone,
}.DecMode()

func enc(t testing.TB, v any) []byte {
	t.Helper()
	b, err := testEnc.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// rawCall sends one request with ctx and returns the status and the
// response map. It checks the CBOR is canonical.
func (e *env) rawCallCtx(ctx context.Context, req []byte) (ctap.Status, map[int]cbor.RawMessage) {
	e.t.Helper()
	resp, err := e.a.Handle(ctx, ctap.Request{CID: e.cid, Cmd: ctap.CmdCBOR, Payload: req})
	if err != nil {
		e.t.Fatalf("Handle error: %v", err)
	}
	if len(resp) == 0 {
		e.t.Fatal("empty response")
	}
	st := ctap.Status(resp[0])
	limit := 2048
	if len(req) > 0 && req[0] == cMakeCredential {
		limit = 4096
	}
	if len(resp) > limit {
		e.t.Fatalf("response of %d bytes exceeds %d", len(resp), limit)
	}
	if st != ctap.StatusOK {
		if len(resp) != 1 {
			e.t.Fatalf("error %v with a body of %d bytes", st, len(resp)-1)
		}
		return st, nil
	}
	body := resp[1:]
	if len(body) == 0 {
		return st, nil
	}
	checkCanonical(e.t, body)
	var m map[int]cbor.RawMessage
	if err := strictDec.Unmarshal(body, &m); err != nil {
		e.t.Fatalf("response is not a CBOR map with integer keys: %v", err)
	}
	return st, m
}

func (e *env) rawCall(req []byte) (ctap.Status, map[int]cbor.RawMessage) {
	e.t.Helper()
	return e.rawCallCtx(context.Background(), req)
}

func (e *env) call(cmd byte, params map[int]any) (ctap.Status, map[int]cbor.RawMessage) {
	e.t.Helper()
	req := []byte{cmd}
	if params != nil {
		req = append(req, enc(e.t, params)...)
	}
	return e.rawCall(req)
}

// checkCanonical decodes b into generic values and re-encodes them in
// CTAP2 canonical form: the bytes must be identical.
func checkCanonical(t testing.TB, b []byte) {
	t.Helper()
	var v any
	if err := strictDec.Unmarshal(b, &v); err != nil {
		t.Fatalf("malformed CBOR output: %v", err)
	}
	again, err := testEnc.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(again, b) {
		t.Fatalf("CBOR output is not canonical:\n got % x\nwant % x", b, again)
	}
}

func field[T any](t testing.TB, m map[int]cbor.RawMessage, k int) T {
	t.Helper()
	var v T
	r, ok := m[k]
	if !ok {
		t.Fatalf("response lacks key %d", k)
	}
	if err := strictDec.Unmarshal(r, &v); err != nil {
		t.Fatalf("key %d: %v", k, err)
	}
	return v
}

func wantStatus(t testing.TB, what string, got, want ctap.Status) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: status %v, want %v", what, got, want)
	}
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
		req[8] = authenticate(2, o.token, clientDataHash)
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

// ---- the platform side of the PIN/UV auth protocols, written from the
// specification (CTAP 2.1 §6.5.6, §6.5.7) ----

type platform struct {
	e      *env
	proto  uint64
	priv   *ecdh.PrivateKey
	shared []byte
}

func (e *env) newPlatform(proto uint64) *platform {
	e.t.Helper()
	st, m := e.call(cClientPIN, map[int]any{1: proto, 2: 2})
	wantStatus(e.t, "getKeyAgreement", st, ctap.StatusOK)
	var k map[int]any
	if err := strictDec.Unmarshal(m[1], &k); err != nil {
		e.t.Fatal(err)
	}
	x, _ := k[-2].([]byte)
	y, _ := k[-3].([]byte)
	peer, err := ecdh.P256().NewPublicKey(append(append([]byte{4}, x...), y...))
	if err != nil {
		e.t.Fatal(err)
	}
	p := &platform{e: e, proto: proto}
	if p.priv, err = ecdh.P256().GenerateKey(rand.Reader); err != nil {
		e.t.Fatal(err)
	}
	z, err := p.priv.ECDH(peer)
	if err != nil {
		e.t.Fatal(err)
	}
	p.shared = kdf(proto, z)
	return p
}

func kdf(proto uint64, z []byte) []byte {
	if proto == 1 {
		h := sha256.Sum256(z)
		return h[:]
	}
	zeros := make([]byte, 32)
	mk, _ := hkdf.Key(sha256.New, z, zeros, "CTAP2 HMAC key", 32)
	ak, _ := hkdf.Key(sha256.New, z, zeros, "CTAP2 AES key", 32)
	return append(mk, ak...)
}

// authenticate is the protocol's MAC: protocol 1 truncates to 16 bytes;
// protocol 2 with a 64-byte shared secret keys with its HMAC half.
func authenticate(proto uint64, key, msg []byte) []byte {
	if len(key) == 64 {
		key = key[:32]
	}
	h := hmac.New(sha256.New, key)
	h.Write(msg)
	if proto == 1 {
		return h.Sum(nil)[:16]
	}
	return h.Sum(nil)
}

func (p *platform) coseKey() map[int]any {
	b := p.priv.PublicKey().Bytes()
	return map[int]any{1: 2, 3: -25, -1: 1, -2: b[1:33], -3: b[33:]}
}

func (p *platform) aesKey() []byte {
	if p.proto == 1 {
		return p.shared
	}
	return p.shared[32:]
}

func (p *platform) encrypt(pt []byte) []byte {
	blk, _ := aes.NewCipher(p.aesKey())
	iv := make([]byte, 16)
	if p.proto == 2 {
		_, _ = rand.Read(iv)
	}
	out := make([]byte, len(pt))
	cipher.NewCBCEncrypter(blk, iv).CryptBlocks(out, pt)
	if p.proto == 2 {
		return append(iv, out...)
	}
	return out
}

func (p *platform) decrypt(ct []byte) []byte {
	p.e.t.Helper()
	iv := make([]byte, 16)
	if p.proto == 2 {
		iv, ct = ct[:16], ct[16:]
	}
	if len(ct)%16 != 0 {
		p.e.t.Fatalf("ciphertext length %d", len(ct))
	}
	blk, _ := aes.NewCipher(p.aesKey())
	out := make([]byte, len(ct))
	cipher.NewCBCDecrypter(blk, iv).CryptBlocks(out, ct)
	return out
}

func (p *platform) setPIN(pin string) {
	p.e.t.Helper()
	padded := make([]byte, 64)
	copy(padded, pin)
	enc := p.encrypt(padded)
	st, _ := p.e.call(cClientPIN, map[int]any{1: p.proto, 2: 3, 3: p.coseKey(),
		4: authenticate(p.proto, p.shared, enc), 5: enc})
	wantStatus(p.e.t, "setPIN", st, ctap.StatusOK)
}

// changePIN changes the PIN from cur to next (clientPIN 0x04).
func (p *platform) changePIN(cur, next string) ctap.Status {
	p.e.t.Helper()
	padded := make([]byte, 64)
	copy(padded, next)
	newEnc := p.encrypt(padded)
	h := sha256.Sum256([]byte(cur))
	hashEnc := p.encrypt(h[:16])
	st, _ := p.e.call(cClientPIN, map[int]any{1: p.proto, 2: 4, 3: p.coseKey(),
		4: authenticate(p.proto, p.shared, append(append([]byte(nil), newEnc...), hashEnc...)), 5: newEnc, 6: hashEnc})
	return st
}

// token gets a pinUvAuthToken with permissions for rpID.
func (p *platform) token(pin string, perms uint8, rpID string) []byte {
	p.e.t.Helper()
	h := sha256.Sum256([]byte(pin))
	req := map[int]any{1: p.proto, 2: 9, 3: p.coseKey(), 6: p.encrypt(h[:16]), 9: perms}
	if rpID != "" {
		req[10] = rpID
	}
	st, m := p.e.call(cClientPIN, req)
	wantStatus(p.e.t, "getPinUvAuthTokenUsingPinWithPermissions", st, ctap.StatusOK)
	return p.decrypt(field[[]byte](p.e.t, m, 2))
}

// errPrompter fails the test when a prompt is shown.
func failPrompt(t testing.TB) func(context.Context, presence.Request) error {
	return func(_ context.Context, r presence.Request) error {
		t.Errorf("unexpected prompt: %q", r.Message())
		return errors.New("unexpected prompt")
	}
}
