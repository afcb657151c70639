package ctap2

import (
	"bytes"
	"context"
	"crypto/rand"
	"errors"
	"fmt"
	"log/slog"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2/ctap2test"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2/pinuv"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// pinTestEnv is the authenticator, built here with its PIN/UV state in
// reach, over a FakeStore, for the clientPIN and credentialManagement
// tests.
type pinTestEnv struct {
	ctap2test.Caller
	t     testing.TB
	a     *Authenticator
	store *ctap2test.FakeStore
	clock *ctap2test.Clock
}

func newPINTestEnv(t testing.TB) *pinTestEnv {
	t.Helper()
	st := ctap2test.NewFakeStore(25)
	clk := ctap2test.NewClock(time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC))
	ps, err := pinuv.NewState(rand.Reader, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	a := &Authenticator{
		cfg: Config{Store: st, Rand: rand.Reader, Now: clk.Now},
		log: slog.New(slog.DiscardHandler),
		pin: ps,
	}
	return &pinTestEnv{Caller: ctap2test.Caller{T: t, H: a, CID: 1}, t: t, a: a, store: st, clock: clk}
}

// setT makes the environment report to t (a fuzz iteration's).
func (e *pinTestEnv) setT(t testing.TB) { e.t, e.T = t, t }

func (e *pinTestEnv) call(cmd byte, params any) (ctap.Status, map[int]cbor.RawMessage) {
	e.t.Helper()
	return e.Call(cmd, params)
}

func (e *pinTestEnv) callRaw(req []byte) (ctap.Status, map[int]cbor.RawMessage) {
	e.t.Helper()
	return e.CallRaw(req)
}

// pinTestPlatform is the client side of a PIN/UV auth protocol
// (ctaphidtest.Session, written independently of package pinuv).
type pinTestPlatform struct {
	e *pinTestEnv
	*ctaphidtest.Session
}

func (e *pinTestEnv) platform(proto uint64) *pinTestPlatform {
	e.t.Helper()
	st, m := e.call(cmdClientPIN, map[int]any{1: proto, 2: cpGetKeyAgreement})
	wantStatus(e.t, "getKeyAgreement", st, ctap.StatusOK)
	s, err := ctaphidtest.NewSession(proto, ctap2test.Field[ctaphidtest.COSEKey](e.t, m, 1))
	if err != nil {
		e.t.Fatal(err)
	}
	return &pinTestPlatform{e: e, Session: s}
}

// cose is the platform's key as a generic map, for tests that alter it.
func (p *pinTestPlatform) cose() map[int]any {
	return map[int]any{1: p.Key.Kty, 3: p.Key.Alg, -1: p.Key.Crv, -2: p.Key.X, -3: p.Key.Y}
}

func (p *pinTestPlatform) decrypt(ct []byte) []byte {
	p.e.t.Helper()
	pt, err := p.Decrypt(ct)
	if err != nil {
		p.e.t.Fatal(err)
	}
	return pt
}

// mac authenticates msg with key (the shared secret or a token).
func (p *pinTestPlatform) mac(key, msg []byte) []byte {
	return ctaphidtest.Authenticate(p.Proto, key, msg)
}

func (p *pinTestPlatform) setPIN(pin []byte) ctap.Status {
	p.e.t.Helper()
	st, _ := p.e.call(cmdClientPIN, ctaphidtest.SetPINRequest(p.Session, pin))
	return st
}

func (p *pinTestPlatform) changePIN(cur, next string) ctap.Status {
	p.e.t.Helper()
	st, _ := p.e.call(cmdClientPIN, ctaphidtest.ChangePINRequest(p.Session, cur, next))
	return st
}

// token runs getPinUvAuthTokenUsingPinWithPermissions (perms != 0) or
// the legacy getPINToken (perms == 0) and returns the decrypted token.
func (p *pinTestPlatform) token(pin string, perms pinuv.Permission, rpID string) ([]byte, ctap.Status) {
	p.e.t.Helper()
	req := ctaphidtest.LegacyTokenRequest(p.Session, pin)
	if perms != 0 {
		req = ctaphidtest.TokenRequest(p.Session, pin, uint8(perms), rpID)
	}
	st, m := p.e.call(cmdClientPIN, req)
	if st != ctap.StatusOK {
		return nil, st
	}
	tok := p.decrypt(ctap2test.Field[[]byte](p.e.t, m, 2))
	if len(tok) != 32 {
		p.e.t.Fatalf("token of %d bytes", len(tok))
	}
	return tok, st
}

func (e *pinTestEnv) retries() (int, bool) {
	e.t.Helper()
	st, m := e.call(cmdClientPIN, map[int]any{1: 1, 2: cpGetPINRetries})
	wantStatus(e.t, "getPINRetries", st, ctap.StatusOK)
	return ctap2test.Field[int](e.t, m, 3), ctap2test.Field[bool](e.t, m, 4)
}

var wantStatus = ctap2test.WantStatus

func TestClientPINSetAndToken(t *testing.T) {
	for _, proto := range []uint64{1, 2} {
		e := newPINTestEnv(t)
		if n, pc := e.retries(); n != ctap2test.PINRetries || pc {
			t.Fatalf("fresh retries = %d, %v", n, pc)
		}
		p := e.platform(proto)
		_, st := p.token("1234", 0, "")
		wantStatus(t, "token without PIN", st, ctap.StatusPINNotSet)
		wantStatus(t, "setPIN", p.setPIN([]byte("1234")), ctap.StatusOK)
		if h, ok := e.store.PINHash(); !ok || h != [16]byte(ctaphidtest.PINHash("1234")) {
			t.Fatal("store did not receive LEFT(SHA-256(pin), 16)")
		}
		wantStatus(t, "setPIN again", p.setPIN([]byte("5678")), ctap.StatusPINAuthInvalid)

		tok, st := p.token("1234", 0, "")
		wantStatus(t, "getPINToken", st, ctap.StatusOK)
		// The legacy token carries mc and ga, not cm.
		if err := e.a.pin.Authorize(pinuv.PermGetAssertion, "x.example"); err != nil {
			t.Fatalf("legacy token lacks ga: %v", err)
		}
		if err := e.a.pin.VerifyParam(proto, []byte("m"), p.mac(tok, []byte("m"))); err != nil {
			t.Fatalf("token does not verify: %v", err)
		}
		if err := e.a.pin.Authorize(pinuv.PermCredentialManagement, ""); err == nil {
			t.Fatal("legacy token has cm")
		}

		tok, st = p.token("1234", pinuv.PermCredentialManagement, "")
		wantStatus(t, "token with cm", st, ctap.StatusOK)
		st, m := e.call(cmdCredentialManagement, map[int]any{1: cmGetCredsMetadata, 3: proto, 4: p.mac(tok, []byte{cmGetCredsMetadata})})
		wantStatus(t, "getCredsMetadata with token", st, ctap.StatusOK)
		if n := ctap2test.Field[int](t, m, 1); n != 0 {
			t.Fatalf("existing = %d", n)
		}
	}
}

func TestClientPINSetPINBadAuth(t *testing.T) {
	e := newPINTestEnv(t)
	p := e.platform(2)
	enc := p.Encrypt(ctaphidtest.PaddedPIN([]byte("1234")))
	bad := p.Auth(enc)
	bad[3] ^= 0x40
	st, _ := e.call(cmdClientPIN, map[int]any{1: 2, 2: cpSetPIN, 3: p.cose(), 4: bad, 5: enc})
	wantStatus(t, "setPIN bad param", st, ctap.StatusPINAuthInvalid)
	st, _ = e.call(cmdClientPIN, map[int]any{1: 2, 2: cpSetPIN, 3: p.cose(), 5: enc})
	wantStatus(t, "setPIN without param", st, ctap.StatusMissingParameter)
	if e.store.PINIsSet() {
		t.Fatal("PIN set despite bad authentication")
	}
}

func TestClientPINPolicy(t *testing.T) {
	cases := []struct {
		name string
		pin  []byte
		want ctap.Status
	}{
		{"3 code points", []byte("abc"), ctap.StatusPINPolicyViolation},
		{"3 code points in 6 bytes", []byte("äöü"), ctap.StatusPINPolicyViolation},
		{"64 bytes", bytes.Repeat([]byte("a"), 64), ctap.StatusPINPolicyViolation},
		{"not UTF-8", []byte{0xff, 0xfe, 0x41, 0x42, 0x43}, ctap.StatusPINPolicyViolation},
		{"empty", nil, ctap.StatusPINPolicyViolation},
		{"63 bytes", bytes.Repeat([]byte("b"), 63), ctap.StatusOK},
		{"4 code points in 12 bytes", []byte("€€€€"), ctap.StatusOK},
	}
	for _, proto := range []uint64{1, 2} {
		for _, c := range cases {
			e := newPINTestEnv(t)
			p := e.platform(proto)
			wantStatus(t, c.name, p.setPIN(c.pin), c.want)
			if e.store.PINIsSet() != (c.want == ctap.StatusOK) {
				t.Fatalf("%s: PIN set = %v", c.name, e.store.PINIsSet())
			}
		}
	}
	// A padded PIN shorter than 64 bytes is malformed.
	e := newPINTestEnv(t)
	p := e.platform(1)
	enc := p.Encrypt(append([]byte("1234"), make([]byte, 12)...))
	st, _ := e.call(cmdClientPIN, map[int]any{1: 1, 2: cpSetPIN, 3: p.cose(), 4: p.Auth(enc), 5: enc})
	wantStatus(t, "16-byte padded PIN", st, ctap.StatusInvalidParameter)
}

func TestClientPINWrongPINs(t *testing.T) {
	e := newPINTestEnv(t)
	p := e.platform(2)
	wantStatus(t, "setPIN", p.setPIN([]byte("correct horse")), ctap.StatusOK)

	for i := 1; i <= 2; i++ {
		before, _ := e.a.pin.KeyAgreement(2)
		_, st := p.token("wrong", pinuv.PermGetAssertion, "")
		wantStatus(t, "wrong PIN", st, ctap.StatusPINInvalid)
		if n, pc := e.retries(); n != ctap2test.PINRetries-i || pc {
			t.Fatalf("after %d wrong PINs: retries %d, powerCycle %v", i, n, pc)
		}
		after, _ := e.a.pin.KeyAgreement(2)
		if bytes.Equal(before.X, after.X) {
			t.Fatal("key agreement key not regenerated after a wrong PIN")
		}
		p = e.platform(2)
	}
	// The right PIN resets the consecutive count.
	_, st := p.token("correct horse", pinuv.PermGetAssertion, "")
	wantStatus(t, "right PIN", st, ctap.StatusOK)
	if n, _ := e.retries(); n != ctap2test.PINRetries {
		t.Fatalf("retries after right PIN = %d", n)
	}
	for i := 1; i <= 3; i++ {
		p = e.platform(2)
		_, st = p.token("wrong", pinuv.PermGetAssertion, "")
		want := ctap.StatusPINInvalid
		if i == 3 {
			want = ctap.StatusPINAuthBlocked
		}
		wantStatus(t, "wrong PIN in a row", st, want)
	}
	if n, pc := e.retries(); n != ctap2test.PINRetries-3 || !pc {
		t.Fatalf("after 3 in a row: retries %d, powerCycleState %v", n, pc)
	}
	// Blocked until restart, even with the right PIN, and without
	// spending retries.
	p = e.platform(2)
	_, st = p.token("correct horse", pinuv.PermGetAssertion, "")
	wantStatus(t, "right PIN while auth-blocked", st, ctap.StatusPINAuthBlocked)
	wantStatus(t, "changePIN while auth-blocked", p.changePIN("correct horse", "new pin"), ctap.StatusPINAuthBlocked)
	if n, _ := e.retries(); n != ctap2test.PINRetries-3 {
		t.Fatalf("retries spent while blocked: %d", n)
	}
}

func TestClientPINTPMLockoutAndReset(t *testing.T) {
	e := newPINTestEnv(t)
	p := e.platform(2)
	wantStatus(t, "setPIN", p.setPIN([]byte("1234")), ctap.StatusOK)
	e.store.PINError = fmt.Errorf("checking PIN: %w", tpmstore.ErrTPMLockout)
	_, st := p.token("1234", pinuv.PermGetAssertion, "")
	wantStatus(t, "TPM lockout", st, ctap.StatusPINAuthBlocked)
	e.store.PINError = errors.New("TPM on fire")
	_, st = p.token("1234", pinuv.PermGetAssertion, "")
	wantStatus(t, "TPM failure", st, ctap.StatusOther)
	e.store.PINError = nil
	// Neither regenerated the key agreement key nor blocked the PIN.
	_, st = p.token("1234", pinuv.PermGetAssertion, "")
	wantStatus(t, "after lockout ends", st, ctap.StatusOK)

	for range 3 {
		p = e.platform(2)
		p.token("bad", pinuv.PermGetAssertion, "")
	}
	if _, pc := e.retries(); !pc {
		t.Fatal("no powerCycleState after 3 wrong PINs")
	}
	// authenticatorReset clears the store and regenerates; a new PIN
	// works again without a restart.
	if err := e.store.Reset(); err != nil {
		t.Fatal(err)
	}
	if err := e.a.pin.Regenerate(); err != nil {
		t.Fatal(err)
	}
	if n, pc := e.retries(); n != ctap2test.PINRetries || pc {
		t.Fatalf("after reset: retries %d, powerCycleState %v", n, pc)
	}
	p = e.platform(2)
	wantStatus(t, "setPIN after reset", p.setPIN([]byte("abcd")), ctap.StatusOK)
	_, st = p.token("abcd", pinuv.PermGetAssertion, "")
	wantStatus(t, "token after reset", st, ctap.StatusOK)
}

func TestClientPINBlocked(t *testing.T) {
	e := newPINTestEnv(t)
	p := e.platform(1)
	wantStatus(t, "setPIN", p.setPIN([]byte("1234")), ctap.StatusOK)
	e.store.ResetPINState(1)
	_, st := p.token("0000", pinuv.PermGetAssertion, "")
	wantStatus(t, "last wrong PIN", st, ctap.StatusPINBlocked)
	p = e.platform(1)
	_, st = p.token("1234", pinuv.PermGetAssertion, "")
	wantStatus(t, "right PIN when blocked", st, ctap.StatusPINBlocked)
}

func TestClientPINChange(t *testing.T) {
	for _, proto := range []uint64{1, 2} {
		e := newPINTestEnv(t)
		p := e.platform(proto)
		wantStatus(t, "changePIN without PIN", p.changePIN("1234", "5678"), ctap.StatusPINNotSet)
		wantStatus(t, "setPIN", p.setPIN([]byte("1234")), ctap.StatusOK)
		tok, st := p.token("1234", pinuv.PermCredentialManagement, "")
		wantStatus(t, "token", st, ctap.StatusOK)

		wantStatus(t, "changePIN with wrong current", p.changePIN("9999", "5678"), ctap.StatusPINInvalid)
		p = e.platform(proto)
		wantStatus(t, "changePIN to a short PIN", p.changePIN("1234", "56"), ctap.StatusPINPolicyViolation)
		wantStatus(t, "changePIN", p.changePIN("1234", "5678"), ctap.StatusOK)
		if h, _ := e.store.PINHash(); h != [16]byte(ctaphidtest.PINHash("5678")) {
			t.Fatal("store holds the wrong new PIN")
		}
		if err := e.a.pin.VerifyParam(proto, []byte{1}, p.mac(tok, []byte{1})); err == nil {
			t.Fatal("token issued before changePIN still valid")
		}
		_, st = p.token("1234", pinuv.PermGetAssertion, "")
		wantStatus(t, "old PIN", st, ctap.StatusPINInvalid)
		p = e.platform(proto)
		_, st = p.token("5678", pinuv.PermGetAssertion, "")
		wantStatus(t, "new PIN", st, ctap.StatusOK)

		// A bad pinUvAuthParam changes nothing and costs no retry.
		newEnc := p.Encrypt(ctaphidtest.PaddedPIN([]byte("abcd")))
		hashEnc := p.Encrypt(ctaphidtest.PINHash("5678"))
		st, _ = e.call(cmdClientPIN, map[int]any{1: proto, 2: cpChangePIN, 3: p.cose(), 4: p.Auth(newEnc), 5: newEnc, 6: hashEnc})
		wantStatus(t, "changePIN param over newPinEnc only", st, ctap.StatusPINAuthInvalid)
		if n, _ := e.retries(); n != ctap2test.PINRetries {
			t.Fatalf("retries = %d", n)
		}
	}
}

func TestClientPINPermissions(t *testing.T) {
	e := newPINTestEnv(t)
	p := e.platform(2)
	wantStatus(t, "setPIN", p.setPIN([]byte("1234")), ctap.StatusOK)
	hashEnc := p.Encrypt(ctaphidtest.PINHash("1234"))
	for _, c := range []struct {
		name string
		req  map[int]any
		want ctap.Status
	}{
		{"permissions 0", map[int]any{1: 2, 2: cpGetTokenUsingPINWithPerms, 3: p.cose(), 6: hashEnc, 9: 0}, ctap.StatusInvalidParameter},
		{"permissions missing", map[int]any{1: 2, 2: cpGetTokenUsingPINWithPerms, 3: p.cose(), 6: hashEnc}, ctap.StatusMissingParameter},
		{"bio enrollment", map[int]any{1: 2, 2: cpGetTokenUsingPINWithPerms, 3: p.cose(), 6: hashEnc, 9: 0x08}, ctap.StatusUnauthorizedPermission},
		{"authenticator config", map[int]any{1: 2, 2: cpGetTokenUsingPINWithPerms, 3: p.cose(), 6: hashEnc, 9: 0x21}, ctap.StatusUnauthorizedPermission},
		{"legacy with rpId", map[int]any{1: 2, 2: cpGetPINToken, 3: p.cose(), 6: hashEnc, 10: "a.example"}, ctap.StatusInvalidParameter},
		{"legacy with permissions", map[int]any{1: 2, 2: cpGetPINToken, 3: p.cose(), 6: hashEnc, 9: 1}, ctap.StatusInvalidParameter},
		{"no keyAgreement", map[int]any{1: 2, 2: cpGetPINToken, 6: hashEnc}, ctap.StatusMissingParameter},
		{"no pinHashEnc", map[int]any{1: 2, 2: cpGetPINToken, 3: p.cose()}, ctap.StatusMissingParameter},
		{"short pinHashEnc", map[int]any{1: 2, 2: cpGetPINToken, 3: p.cose(), 6: hashEnc[:16]}, ctap.StatusInvalidParameter},
	} {
		st, _ := e.call(cmdClientPIN, c.req)
		wantStatus(t, c.name, st, c.want)
	}
	if n, _ := e.retries(); n != ctap2test.PINRetries {
		t.Fatalf("refused requests spent retries: %d", n)
	}

	// A token for rpId A is refused for B.
	_, st := p.token("1234", pinuv.PermMakeCredential|pinuv.PermGetAssertion, "a.example")
	wantStatus(t, "token for a.example", st, ctap.StatusOK)
	if err := e.a.pin.Authorize(pinuv.PermMakeCredential, "b.example"); !errors.Is(err, ctap.StatusPINAuthInvalid) {
		t.Fatalf("a.example token used for b.example: %v", err)
	}
	if err := e.a.pin.Authorize(pinuv.PermGetAssertion, "a.example"); err != nil {
		t.Fatalf("a.example token refused for a.example: %v", err)
	}
	if err := e.a.pin.Authorize(pinuv.PermCredentialManagement, "a.example"); !errors.Is(err, ctap.StatusPINAuthInvalid) {
		t.Fatalf("permission not granted but authorized: %v", err)
	}
}

func TestClientPINTokenExpiry(t *testing.T) {
	e := newPINTestEnv(t)
	p := e.platform(2)
	wantStatus(t, "setPIN", p.setPIN([]byte("1234")), ctap.StatusOK)
	meta := func(tok []byte) ctap.Status {
		st, _ := e.call(cmdCredentialManagement, map[int]any{1: cmGetCredsMetadata, 3: 2, 4: p.mac(tok, []byte{cmGetCredsMetadata})})
		return st
	}
	tok, _ := p.token("1234", pinuv.PermCredentialManagement, "")
	e.clock.Advance(pinuv.InitialUsageLimit + time.Second)
	wantStatus(t, "unused token after 31 s", meta(tok), ctap.StatusPINAuthInvalid)

	tok, _ = p.token("1234", pinuv.PermCredentialManagement, "")
	wantStatus(t, "fresh token", meta(tok), ctap.StatusOK)
	e.clock.Advance(9 * time.Minute)
	wantStatus(t, "used token after 9 min", meta(tok), ctap.StatusOK)
	e.clock.Advance(2 * time.Minute)
	wantStatus(t, "token after 11 min", meta(tok), ctap.StatusPINAuthInvalid)
}

func TestClientPINBadKeyAgreement(t *testing.T) {
	e := newPINTestEnv(t)
	p := e.platform(2)
	wantStatus(t, "setPIN", p.setPIN([]byte("1234")), ctap.StatusOK)
	offCurve := p.cose()
	y := append([]byte(nil), offCurve[-3].([]byte)...)
	y[0] ^= 0x80
	offCurve[-3] = y
	hashEnc := p.Encrypt(ctaphidtest.PINHash("1234"))
	for name, ka := range map[string]any{
		"off curve":     offCurve,
		"zero point":    map[int]any{1: 2, 3: -25, -1: 1, -2: make([]byte, 32), -3: make([]byte, 32)},
		"short x":       map[int]any{1: 2, 3: -25, -1: 1, -2: make([]byte, 3), -3: y},
		"no y":          map[int]any{1: 2, 3: -25, -1: 1, -2: y},
		"empty map":     map[int]any{},
		"P-384 curve":   map[int]any{1: 2, 3: -25, -1: 2, -2: y, -3: y},
		"OKP key":       map[int]any{1: 1, 3: -25, -1: 6, -2: y},
		"x as a string": map[int]any{1: 2, 3: -25, -1: 1, -2: "x", -3: y},
		"not a map":     []int{1, 2},
	} {
		st, _ := e.call(cmdClientPIN, map[int]any{1: 2, 2: cpGetPINToken, 3: ka, 6: hashEnc})
		want := ctap.StatusInvalidParameter
		if name == "x as a string" || name == "not a map" {
			want = ctap.StatusCBORUnexpectedType
		}
		wantStatus(t, name, st, want)
		st, _ = e.call(cmdClientPIN, map[int]any{1: 2, 2: cpChangePIN, 3: ka, 4: make([]byte, 32), 5: make([]byte, 80), 6: hashEnc})
		wantStatus(t, name+" (changePIN)", st, want)
	}
	if n, _ := e.retries(); n != ctap2test.PINRetries {
		t.Fatalf("bad key agreements spent retries: %d", n)
	}
}

func TestClientPINMalformed(t *testing.T) {
	e := newPINTestEnv(t)
	for _, c := range []struct {
		name string
		req  []byte
		want ctap.Status
	}{
		{"no parameters", []byte{cmdClientPIN}, ctap.StatusMissingParameter},
		{"truncated map", []byte{cmdClientPIN, 0xa2, 0x01, 0x01}, ctap.StatusInvalidCBOR},
		{"trailing bytes", []byte{cmdClientPIN, 0xa1, 0x02, 0x01, 0x00}, ctap.StatusInvalidCBOR},
		{"duplicate key", []byte{cmdClientPIN, 0xa2, 0x02, 0x01, 0x02, 0x01}, ctap.StatusInvalidCBOR},
		{"not a map", []byte{cmdClientPIN, 0x01}, ctap.StatusCBORUnexpectedType},
		{"subCommand as text", []byte{cmdClientPIN, 0xa1, 0x02, 0x61, 0x31}, ctap.StatusCBORUnexpectedType},
		{"no subCommand", []byte{cmdClientPIN, 0xa1, 0x01, 0x01}, ctap.StatusMissingParameter},
	} {
		st, _ := e.callRaw(c.req)
		wantStatus(t, c.name, st, c.want)
	}
	for _, c := range []struct {
		name string
		req  map[int]any
		want ctap.Status
	}{
		{"protocol 3", map[int]any{1: 3, 2: cpGetKeyAgreement}, ctap.StatusInvalidParameter},
		{"protocol missing", map[int]any{2: cpGetKeyAgreement}, ctap.StatusMissingParameter},
		{"UV token", map[int]any{1: 2, 2: cpGetTokenUsingUVWithPerms, 9: 1}, ctap.StatusInvalidSubcommand},
		{"UV retries", map[int]any{1: 2, 2: cpGetUVRetries}, ctap.StatusInvalidSubcommand},
		{"subCommand 8", map[int]any{1: 2, 2: 8}, ctap.StatusInvalidSubcommand},
		{"subCommand 0x42", map[int]any{1: 2, 2: 0x42}, ctap.StatusInvalidSubcommand},
	} {
		st, _ := e.call(cmdClientPIN, c.req)
		wantStatus(t, c.name, st, c.want)
	}
	// getPINRetries needs no protocol.
	st, _ := e.call(cmdClientPIN, map[int]any{2: cpGetPINRetries})
	wantStatus(t, "getPINRetries without protocol", st, ctap.StatusOK)
}

// FuzzClientPINKeyAgreement feeds arbitrary CBOR as the keyAgreement of
// every clientPIN subcommand that takes one: never a panic, never an
// internal error, never success.
func FuzzClientPINKeyAgreement(f *testing.F) {
	f.Add([]byte{0xa5, 0x01, 0x02, 0x03, 0x38, 0x18, 0x20, 0x01, 0x21, 0x58, 0x20})
	f.Add([]byte{0xa0})
	f.Add([]byte{0xf6})
	e := newPINTestEnv(f)
	st := e.store
	if err := st.SetPIN([16]byte(ctaphidtest.PINHash("1234"))); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, ka []byte) {
		e.setT(t)
		st.ResetPINState(ctap2test.PINRetries)
		ps, err := pinuv.NewState(rand.Reader, e.clock.Now)
		if err != nil {
			t.Fatal(err)
		}
		e.a.pin = ps
		for _, sub := range []int{cpSetPIN, cpChangePIN, cpGetPINToken, cpGetTokenUsingPINWithPerms} {
			for _, proto := range []int{1, 2} {
				req := map[int]any{
					1: proto, 2: sub, 3: cbor.RawMessage(ka),
					4: make([]byte, 16*proto), 5: make([]byte, 64+16*(proto-1)),
					6: make([]byte, 16*proto), 9: 3,
				}
				b, err := ctap2test.Enc.Marshal(req)
				if err != nil {
					return // ka is not well-formed CBOR: the encoder refuses it
				}
				resp, err := e.a.Handle(context.Background(), ctap.Request{Cmd: ctap.CmdCBOR, Payload: append([]byte{cmdClientPIN}, b...)})
				if err != nil || len(resp) != 1 {
					t.Fatalf("sub %d: resp %x, err %v", sub, resp, err)
				}
				s := ctap.Status(resp[0])
				if s == ctap.StatusOK || s == ctap.StatusOther {
					t.Fatalf("sub %d proto %d keyAgreement %x: status %v", sub, proto, ka, s)
				}
			}
		}
	})
}
