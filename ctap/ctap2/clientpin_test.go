package ctap2

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hkdf"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2/ctap2test"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2/pinuv"
	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// pinTestStore is a software Store for the clientPIN and
// credentialManagement tests: PIN retries as the TPM store counts them,
// resident credentials in memory. Key operations are not needed here.
type pinTestStore struct {
	mu          sync.Mutex
	pinHash     *[16]byte
	retries     int
	consecutive int
	authBlocked bool
	verifyErr   error // returned by VerifyPIN when set (TPM failures)
	*ctap2test.ResidentList
}

const pinTestMaxRetries = 8

func newPINTestStore() *pinTestStore {
	return &pinTestStore{retries: pinTestMaxRetries, ResidentList: ctap2test.NewResidentList(25)}
}

var errPINTestUnused = errors.New("pinTestStore: not used by these tests")

func (s *pinTestStore) CreateCredential([32]byte, tpmstore.CredentialOptions) (*tpmstore.Credential, error) {
	return nil, errPINTestUnused
}
func (s *pinTestStore) OpenCredential([32]byte, []byte) (*tpmstore.Credential, error) {
	return nil, errPINTestUnused
}
func (s *pinTestStore) Sign(*tpmstore.Credential, []byte) ([]byte, error) {
	return nil, errPINTestUnused
}
func (s *pinTestStore) SignWithPIN(*tpmstore.Credential, []byte, [16]byte) ([]byte, error) {
	return nil, errPINTestUnused
}
func (s *pinTestStore) CredRandom(*tpmstore.Credential, bool) ([]byte, error) {
	return nil, errPINTestUnused
}
func (s *pinTestStore) NextCounter() (uint32, error) { return 0, errPINTestUnused }

func (s *pinTestStore) PINIsSet() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.pinHash != nil
}

func (s *pinTestStore) SetPIN(h [16]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.pinHash != nil {
		return tpmstore.ErrPINAlreadySet
	}
	s.pinHash = &h
	s.retries = pinTestMaxRetries
	return nil
}

func (s *pinTestStore) verifyLocked(h [16]byte) error {
	if s.verifyErr != nil {
		return s.verifyErr
	}
	switch {
	case s.pinHash == nil:
		return tpmstore.ErrPINNotSet
	case s.retries == 0:
		return tpmstore.ErrPINBlocked
	case s.authBlocked:
		return tpmstore.ErrPINAuthBlocked
	case *s.pinHash == h:
		s.retries = pinTestMaxRetries
		s.consecutive = 0
		return nil
	}
	s.retries--
	s.consecutive++
	switch {
	case s.retries == 0:
		return tpmstore.ErrPINBlocked
	case s.consecutive >= 3:
		s.authBlocked = true
		return tpmstore.ErrPINAuthBlocked
	}
	return tpmstore.ErrPINInvalid
}

func (s *pinTestStore) VerifyPIN(h [16]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.verifyLocked(h)
}

func (s *pinTestStore) ChangePIN(cur, next [16]byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if err := s.verifyLocked(cur); err != nil {
		return err
	}
	s.pinHash = &next
	return nil
}

func (s *pinTestStore) PINRetries() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.retries
}

func (s *pinTestStore) Reset() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.pinHash, s.retries = nil, pinTestMaxRetries
	s.ResidentList.Clear()
	s.consecutive, s.authBlocked = 0, false
	return nil
}

// pinTestClock is the injected clock.
type pinTestClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *pinTestClock) now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *pinTestClock) advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type pinTestEnv struct {
	t     testing.TB
	a     *Authenticator
	store *pinTestStore
	clock *pinTestClock
	cid   uint32 // CTAPHID channel the requests come on
}

func newPINTestEnv(t testing.TB) *pinTestEnv {
	t.Helper()
	st := newPINTestStore()
	clk := &pinTestClock{t: time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC)}
	ps, err := pinuv.NewState(rand.Reader, clk.now)
	if err != nil {
		t.Fatal(err)
	}
	a := &Authenticator{
		cfg: Config{Store: st, Rand: rand.Reader, Now: clk.now},
		log: slog.New(slog.DiscardHandler),
		pin: ps,
	}
	return &pinTestEnv{t: t, a: a, store: st, clock: clk, cid: 1}
}

var pinTestEnc, _ = cbor.CTAP2EncOptions().EncMode()

// call sends one CTAP2 command and returns the status and the decoded
// response map. It checks that any response is canonical CBOR.
func (e *pinTestEnv) call(cmd byte, params any) (ctap.Status, map[int]cbor.RawMessage) {
	e.t.Helper()
	req := []byte{cmd}
	if params != nil {
		b, err := pinTestEnc.Marshal(params)
		if err != nil {
			e.t.Fatal(err)
		}
		req = append(req, b...)
	}
	return e.callRaw(req)
}

func (e *pinTestEnv) callRaw(req []byte) (ctap.Status, map[int]cbor.RawMessage) {
	e.t.Helper()
	resp, err := e.a.Handle(context.Background(), ctap.Request{CID: e.cid, Cmd: ctap.CmdCBOR, Payload: req})
	if err != nil {
		e.t.Fatalf("Handle: %v", err)
	}
	if len(resp) == 0 {
		e.t.Fatal("empty response")
	}
	st := ctap.Status(resp[0])
	if st != ctap.StatusOK || len(resp) == 1 {
		if len(resp) != 1 {
			e.t.Fatalf("status %v with a body", st)
		}
		return st, nil
	}
	var m map[int]cbor.RawMessage
	if err := cbor.Unmarshal(resp[1:], &m); err != nil {
		e.t.Fatalf("response is not a CBOR map: %v", err)
	}
	var generic any
	if err := cbor.Unmarshal(resp[1:], &generic); err != nil {
		e.t.Fatal(err)
	}
	again, err := pinTestEnc.Marshal(generic)
	if err != nil {
		e.t.Fatal(err)
	}
	if !bytes.Equal(again, resp[1:]) {
		e.t.Fatalf("response is not canonical CBOR:\n got %x\nwant %x", resp[1:], again)
	}
	return st, m
}

func pinTestField[T any](t testing.TB, m map[int]cbor.RawMessage, key int) T {
	t.Helper()
	var v T
	raw, ok := m[key]
	if !ok {
		t.Fatalf("response lacks key %d", key)
	}
	if err := cbor.Unmarshal(raw, &v); err != nil {
		t.Fatalf("response key %d: %v", key, err)
	}
	return v
}

// pinTestPlatform is the client side of a PIN/UV auth protocol, written
// independently of package pinuv.
type pinTestPlatform struct {
	e      *pinTestEnv
	proto  uint64
	key    *ecdh.PrivateKey
	shared []byte
}

func (e *pinTestEnv) platform(proto uint64) *pinTestPlatform {
	e.t.Helper()
	st, m := e.call(cmdClientPIN, map[int]any{1: proto, 2: cpGetKeyAgreement})
	if st != ctap.StatusOK {
		e.t.Fatalf("getKeyAgreement: %v", st)
	}
	ka := pinTestField[map[int]any](e.t, m, 1)
	x, _ := ka[-2].([]byte)
	y, _ := ka[-3].([]byte)
	if ka[1] != uint64(2) || ka[3] != int64(-25) || ka[-1] != uint64(1) {
		e.t.Fatalf("key agreement header %v", ka)
	}
	pub, err := ecdh.P256().NewPublicKey(append(append([]byte{4}, x...), y...))
	if err != nil {
		e.t.Fatalf("authenticator key: %v", err)
	}
	priv, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		e.t.Fatal(err)
	}
	z, err := priv.ECDH(pub)
	if err != nil {
		e.t.Fatal(err)
	}
	p := &pinTestPlatform{e: e, proto: proto, key: priv}
	if proto == 1 {
		h := sha256.Sum256(z)
		p.shared = h[:]
	} else {
		salt := make([]byte, 32)
		hk, _ := hkdf.Key(sha256.New, z, salt, "CTAP2 HMAC key", 32)
		ak, _ := hkdf.Key(sha256.New, z, salt, "CTAP2 AES key", 32)
		p.shared = append(hk, ak...)
	}
	return p
}

func (p *pinTestPlatform) cose() map[int]any {
	b := p.key.PublicKey().Bytes()
	return map[int]any{1: 2, 3: -25, -1: 1, -2: b[1:33], -3: b[33:]}
}

func (p *pinTestPlatform) aesKey() []byte {
	if p.proto == 1 {
		return p.shared
	}
	return p.shared[32:]
}

func (p *pinTestPlatform) encrypt(pt []byte) []byte {
	b, err := aes.NewCipher(p.aesKey())
	if err != nil {
		p.e.t.Fatal(err)
	}
	iv := make([]byte, 16)
	if p.proto == 2 {
		rand.Read(iv)
	}
	out := make([]byte, len(pt))
	cipher.NewCBCEncrypter(b, iv).CryptBlocks(out, pt)
	if p.proto == 2 {
		out = append(iv, out...)
	}
	return out
}

func (p *pinTestPlatform) decrypt(ct []byte) []byte {
	p.e.t.Helper()
	iv := make([]byte, 16)
	if p.proto == 2 {
		if len(ct) < 32 {
			p.e.t.Fatalf("protocol 2 ciphertext of %d bytes", len(ct))
		}
		iv, ct = ct[:16], ct[16:]
	}
	if len(ct)%16 != 0 {
		p.e.t.Fatalf("ciphertext of %d bytes", len(ct))
	}
	b, _ := aes.NewCipher(p.aesKey())
	out := make([]byte, len(ct))
	cipher.NewCBCDecrypter(b, iv).CryptBlocks(out, ct)
	return out
}

// mac authenticates msg with key (the shared secret or a token).
func (p *pinTestPlatform) mac(key, msg []byte) []byte {
	if len(key) == 64 {
		key = key[:32]
	}
	m := hmac.New(sha256.New, key)
	m.Write(msg)
	if p.proto == 1 {
		return m.Sum(nil)[:16]
	}
	return m.Sum(nil)
}

func padPIN(pin []byte) []byte {
	out := make([]byte, max(64, (len(pin)+15)/16*16))
	copy(out, pin)
	return out
}

func pinHashOf(pin string) []byte {
	h := sha256.Sum256([]byte(pin))
	return h[:16]
}

func (p *pinTestPlatform) setPIN(pin []byte) ctap.Status {
	p.e.t.Helper()
	enc := p.encrypt(padPIN(pin))
	st, _ := p.e.call(cmdClientPIN, map[int]any{1: p.proto, 2: cpSetPIN, 3: p.cose(), 4: p.mac(p.shared, enc), 5: enc})
	return st
}

func (p *pinTestPlatform) changePIN(cur, next string) ctap.Status {
	p.e.t.Helper()
	newEnc := p.encrypt(padPIN([]byte(next)))
	hashEnc := p.encrypt(pinHashOf(cur))
	param := p.mac(p.shared, append(append([]byte(nil), newEnc...), hashEnc...))
	st, _ := p.e.call(cmdClientPIN, map[int]any{1: p.proto, 2: cpChangePIN, 3: p.cose(), 4: param, 5: newEnc, 6: hashEnc})
	return st
}

// token runs getPinUvAuthTokenUsingPinWithPermissions (perms != 0) or
// the legacy getPINToken (perms == 0) and returns the decrypted token.
func (p *pinTestPlatform) token(pin string, perms pinuv.Permission, rpID string) ([]byte, ctap.Status) {
	p.e.t.Helper()
	req := map[int]any{1: p.proto, 2: cpGetPINToken, 3: p.cose(), 6: p.encrypt(pinHashOf(pin))}
	if perms != 0 {
		req[2] = cpGetTokenUsingPINWithPerms
		req[9] = uint8(perms)
		if rpID != "" {
			req[10] = rpID
		}
	}
	st, m := p.e.call(cmdClientPIN, req)
	if st != ctap.StatusOK {
		return nil, st
	}
	tok := p.decrypt(pinTestField[[]byte](p.e.t, m, 2))
	if len(tok) != 32 {
		p.e.t.Fatalf("token of %d bytes", len(tok))
	}
	return tok, st
}

func (e *pinTestEnv) retries() (int, bool) {
	e.t.Helper()
	st, m := e.call(cmdClientPIN, map[int]any{1: 1, 2: cpGetPINRetries})
	if st != ctap.StatusOK {
		e.t.Fatalf("getPINRetries: %v", st)
	}
	return pinTestField[int](e.t, m, 3), pinTestField[bool](e.t, m, 4)
}

func wantStatus(t testing.TB, what string, got, want ctap.Status) {
	t.Helper()
	if got != want {
		t.Fatalf("%s: status %v, want %v", what, got, want)
	}
}

func TestClientPINSetAndToken(t *testing.T) {
	for _, proto := range []uint64{1, 2} {
		e := newPINTestEnv(t)
		if n, pc := e.retries(); n != pinTestMaxRetries || pc {
			t.Fatalf("fresh retries = %d, %v", n, pc)
		}
		p := e.platform(proto)
		_, st := p.token("1234", 0, "")
		wantStatus(t, "token without PIN", st, ctap.StatusPINNotSet)
		wantStatus(t, "setPIN", p.setPIN([]byte("1234")), ctap.StatusOK)
		if !e.store.PINIsSet() || *e.store.pinHash != [16]byte(pinHashOf("1234")) {
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
		if n := pinTestField[int](t, m, 1); n != 0 {
			t.Fatalf("existing = %d", n)
		}
	}
}

func TestClientPINSetPINBadAuth(t *testing.T) {
	e := newPINTestEnv(t)
	p := e.platform(2)
	enc := p.encrypt(padPIN([]byte("1234")))
	bad := p.mac(p.shared, enc)
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
	enc := p.encrypt(append([]byte("1234"), make([]byte, 12)...))
	st, _ := e.call(cmdClientPIN, map[int]any{1: 1, 2: cpSetPIN, 3: p.cose(), 4: p.mac(p.shared, enc), 5: enc})
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
		if n, pc := e.retries(); n != pinTestMaxRetries-i || pc {
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
	if n, _ := e.retries(); n != pinTestMaxRetries {
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
	if n, pc := e.retries(); n != pinTestMaxRetries-3 || !pc {
		t.Fatalf("after 3 in a row: retries %d, powerCycleState %v", n, pc)
	}
	// Blocked until restart, even with the right PIN, and without
	// spending retries.
	p = e.platform(2)
	_, st = p.token("correct horse", pinuv.PermGetAssertion, "")
	wantStatus(t, "right PIN while auth-blocked", st, ctap.StatusPINAuthBlocked)
	wantStatus(t, "changePIN while auth-blocked", p.changePIN("correct horse", "new pin"), ctap.StatusPINAuthBlocked)
	if n, _ := e.retries(); n != pinTestMaxRetries-3 {
		t.Fatalf("retries spent while blocked: %d", n)
	}
}

func TestClientPINTPMLockoutAndReset(t *testing.T) {
	e := newPINTestEnv(t)
	p := e.platform(2)
	wantStatus(t, "setPIN", p.setPIN([]byte("1234")), ctap.StatusOK)
	e.store.verifyErr = fmt.Errorf("checking PIN: %w", tpmstore.ErrTPMLockout)
	_, st := p.token("1234", pinuv.PermGetAssertion, "")
	wantStatus(t, "TPM lockout", st, ctap.StatusPINAuthBlocked)
	e.store.verifyErr = errors.New("TPM on fire")
	_, st = p.token("1234", pinuv.PermGetAssertion, "")
	wantStatus(t, "TPM failure", st, ctap.StatusOther)
	e.store.verifyErr = nil
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
	if n, pc := e.retries(); n != pinTestMaxRetries || pc {
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
	e.store.retries = 1
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
		if *e.store.pinHash != [16]byte(pinHashOf("5678")) {
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
		newEnc := p.encrypt(padPIN([]byte("abcd")))
		hashEnc := p.encrypt(pinHashOf("5678"))
		st, _ = e.call(cmdClientPIN, map[int]any{1: proto, 2: cpChangePIN, 3: p.cose(), 4: p.mac(p.shared, newEnc), 5: newEnc, 6: hashEnc})
		wantStatus(t, "changePIN param over newPinEnc only", st, ctap.StatusPINAuthInvalid)
		if n, _ := e.retries(); n != pinTestMaxRetries {
			t.Fatalf("retries = %d", n)
		}
	}
}

func TestClientPINPermissions(t *testing.T) {
	e := newPINTestEnv(t)
	p := e.platform(2)
	wantStatus(t, "setPIN", p.setPIN([]byte("1234")), ctap.StatusOK)
	hashEnc := p.encrypt(pinHashOf("1234"))
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
	if n, _ := e.retries(); n != pinTestMaxRetries {
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
	e.clock.advance(pinuv.InitialUsageLimit + time.Second)
	wantStatus(t, "unused token after 31 s", meta(tok), ctap.StatusPINAuthInvalid)

	tok, _ = p.token("1234", pinuv.PermCredentialManagement, "")
	wantStatus(t, "fresh token", meta(tok), ctap.StatusOK)
	e.clock.advance(9 * time.Minute)
	wantStatus(t, "used token after 9 min", meta(tok), ctap.StatusOK)
	e.clock.advance(2 * time.Minute)
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
	hashEnc := p.encrypt(pinHashOf("1234"))
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
	if n, _ := e.retries(); n != pinTestMaxRetries {
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
	if err := st.SetPIN([16]byte(pinHashOf("1234"))); err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, ka []byte) {
		e.t = t
		st.retries, st.consecutive, st.authBlocked = pinTestMaxRetries, 0, false
		ps, err := pinuv.NewState(rand.Reader, e.clock.now)
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
				b, err := pinTestEnc.Marshal(req)
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
