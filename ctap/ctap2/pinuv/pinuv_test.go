package pinuv

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/cose"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2/ctap2test"
)

func newTestState(t *testing.T) (*State, *ctap2test.Clock) {
	t.Helper()
	clk := ctap2test.NewClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	s, err := NewState(nil, clk.Now)
	if err != nil {
		t.Fatal(err)
	}
	return s, clk
}

// The platform side below is written independently of the package code
// (HKDF by hand from HMAC) so that a bug shared by both ends cannot hide.

func hkdfByHand(secret, salt []byte, info string) []byte {
	ext := hmac.New(sha256.New, salt)
	ext.Write(secret)
	prk := ext.Sum(nil)
	exp := hmac.New(sha256.New, prk)
	exp.Write([]byte(info))
	exp.Write([]byte{1})
	return exp.Sum(nil) // 32 bytes: one block is enough
}

func platformShared(t *testing.T, version uint64, plat *ecdh.PrivateKey, auth cose.Key) []byte {
	t.Helper()
	pub, err := ecdh.P256().NewPublicKey(append(append([]byte{4}, auth.X...), auth.Y...))
	if err != nil {
		t.Fatalf("authenticator key agreement key invalid: %v", err)
	}
	z, err := plat.ECDH(pub)
	if err != nil {
		t.Fatal(err)
	}
	if version == 1 {
		h := sha256.Sum256(z)
		return h[:]
	}
	salt := make([]byte, 32)
	return append(hkdfByHand(z, salt, "CTAP2 HMAC key"), hkdfByHand(z, salt, "CTAP2 AES key")...)
}

func platformCOSE(k *ecdh.PrivateKey) cose.Key {
	b := k.PublicKey().Bytes()
	return cose.Key{Kty: 2, Alg: -25, Crv: 1, X: b[1:33], Y: b[33:]}
}

func TestSharedSecretMatchesPlatform(t *testing.T) {
	s, _ := newTestState(t)
	for _, v := range []uint64{1, 2} {
		p, err := s.Protocol(v)
		if err != nil {
			t.Fatal(err)
		}
		if p.Version() != v {
			t.Fatalf("Version() = %d, want %d", p.Version(), v)
		}
		ka, err := s.KeyAgreement(v)
		if err != nil {
			t.Fatal(err)
		}
		if ka.Kty != 2 || ka.Alg != -25 || ka.Crv != 1 {
			t.Fatalf("key agreement COSE header %+v", ka)
		}
		plat, err := ecdh.P256().GenerateKey(rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		want := platformShared(t, v, plat, ka)
		got, err := p.SharedSecret(platformCOSE(plat))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Fatalf("protocol %d shared secret differs from the platform's", v)
		}

		// Encrypt on the platform, decrypt in the authenticator, and back.
		msg := bytes.Repeat([]byte("0123456789abcdef"), 4)
		var ct []byte
		if v == 1 {
			ct = make([]byte, len(msg))
			b, _ := aes.NewCipher(want)
			cipher.NewCBCEncrypter(b, make([]byte, 16)).CryptBlocks(ct, msg)
		} else {
			iv := make([]byte, 16)
			rand.Read(iv)
			ct = make([]byte, len(msg))
			b, _ := aes.NewCipher(want[32:])
			cipher.NewCBCEncrypter(b, iv).CryptBlocks(ct, msg)
			ct = append(iv, ct...)
		}
		pt, err := p.Decrypt(got, ct)
		if err != nil || !bytes.Equal(pt, msg) {
			t.Fatalf("protocol %d decrypt of platform ciphertext: %x, %v", v, pt, err)
		}
		enc, err := p.Encrypt(got, msg)
		if err != nil {
			t.Fatal(err)
		}
		if v == 2 {
			if len(enc) != 16+len(msg) {
				t.Fatalf("protocol 2 ciphertext of %d bytes", len(enc))
			}
			b, _ := aes.NewCipher(want[32:])
			out := make([]byte, len(msg))
			cipher.NewCBCDecrypter(b, enc[:16]).CryptBlocks(out, enc[16:])
			if !bytes.Equal(out, msg) {
				t.Fatal("protocol 2 encrypt does not match the platform's decrypt")
			}
		} else {
			b, _ := aes.NewCipher(want)
			out := make([]byte, len(msg))
			cipher.NewCBCDecrypter(b, make([]byte, 16)).CryptBlocks(out, enc)
			if !bytes.Equal(out, msg) {
				t.Fatal("protocol 1 encrypt does not match the platform's decrypt")
			}
		}

		// Authenticate: protocol 1 is 16 bytes keyed with the whole
		// secret, protocol 2 32 bytes keyed with the HMAC half.
		m := hmac.New(sha256.New, want[:32])
		m.Write(msg)
		full := m.Sum(nil)
		wantTag := full
		if v == 1 {
			wantTag = full[:16]
		}
		if tag := p.Authenticate(got, msg); !bytes.Equal(tag, wantTag) {
			t.Fatalf("protocol %d authenticate = %x, want %x", v, tag, wantTag)
		}
		if !p.Verify(got, msg, wantTag) {
			t.Fatalf("protocol %d verify refused a good tag", v)
		}
		bad := append([]byte(nil), wantTag...)
		bad[0] ^= 1
		if p.Verify(got, msg, bad) || p.Verify(got, msg, wantTag[:len(wantTag)-1]) || p.Verify(got, msg, nil) {
			t.Fatalf("protocol %d verify accepted a bad tag", v)
		}
	}
}

func TestProtocolVersions(t *testing.T) {
	s, _ := newTestState(t)
	for _, v := range []uint64{0, 3, 1 << 40} {
		if _, err := s.Protocol(v); !errors.Is(err, ctap.StatusInvalidParameter) {
			t.Errorf("Protocol(%d) = %v", v, err)
		}
		if _, err := s.KeyAgreement(v); !errors.Is(err, ctap.StatusInvalidParameter) {
			t.Errorf("KeyAgreement(%d) = %v", v, err)
		}
	}
}

func TestBadPlatformKeys(t *testing.T) {
	s, _ := newTestState(t)
	plat, _ := ecdh.P256().GenerateKey(rand.Reader)
	good := platformCOSE(plat)
	offCurve := good
	offCurve.Y = append([]byte(nil), good.Y...)
	offCurve.Y[31] ^= 1
	cases := map[string]cose.Key{
		"off curve":   offCurve,
		"zero point":  {Kty: 2, Alg: -25, Crv: 1, X: make([]byte, 32), Y: make([]byte, 32)},
		"short x":     {Kty: 2, Alg: -25, Crv: 1, X: good.X[:31], Y: good.Y},
		"long y":      {Kty: 2, Alg: -25, Crv: 1, X: good.X, Y: append(append([]byte(nil), good.Y...), 0)},
		"missing":     {Kty: 2, Alg: -25, Crv: 1},
		"wrong kty":   {Kty: 1, Alg: -25, Crv: 1, X: good.X, Y: good.Y},
		"wrong curve": {Kty: 2, Alg: -25, Crv: 2, X: good.X, Y: good.Y},
	}
	for _, v := range []uint64{1, 2} {
		p, _ := s.Protocol(v)
		for name, k := range cases {
			_, err := p.SharedSecret(k)
			if !errors.Is(err, ctap.StatusInvalidParameter) || !errors.Is(err, ErrMalformed) {
				t.Errorf("protocol %d, %s: err = %v, want INVALID_PARAMETER", v, name, err)
			}
		}
	}
}

func TestDecryptRejectsBadLengths(t *testing.T) {
	s, _ := newTestState(t)
	p1, _ := s.Protocol(1)
	p2, _ := s.Protocol(2)
	k32, k64 := make([]byte, 32), make([]byte, 64)
	for name, f := range map[string]func() error{
		"p1 empty":       func() error { _, err := p1.Decrypt(k32, nil); return err },
		"p1 partial":     func() error { _, err := p1.Decrypt(k32, make([]byte, 17)); return err },
		"p1 short key":   func() error { _, err := p1.Decrypt(k32[:16], make([]byte, 16)); return err },
		"p2 only IV":     func() error { _, err := p2.Decrypt(k64, make([]byte, 16)); return err },
		"p2 short":       func() error { _, err := p2.Decrypt(k64, make([]byte, 5)); return err },
		"p2 partial":     func() error { _, err := p2.Decrypt(k64, make([]byte, 40)); return err },
		"p2 32-byte key": func() error { _, err := p2.Decrypt(k32, make([]byte, 32)); return err },
		"p2 encrypt odd": func() error { _, err := p2.Encrypt(k64, make([]byte, 15)); return err },
	} {
		if err := f(); !errors.Is(err, ctap.StatusInvalidParameter) {
			t.Errorf("%s: err = %v, want INVALID_PARAMETER", name, err)
		}
	}
}

func tokenParam(t *testing.T, s *State, v uint64, tok, msg []byte) []byte {
	t.Helper()
	p, err := s.Protocol(v)
	if err != nil {
		t.Fatal(err)
	}
	return p.Authenticate(tok, msg)
}

func TestTokenLifetime(t *testing.T) {
	s, clk := newTestState(t)
	msg := []byte("message")

	tok := s.IssueToken(PermGetAssertion, "")
	if len(tok) != TokenSize {
		t.Fatalf("token of %d bytes", len(tok))
	}
	clk.Advance(InitialUsageLimit + time.Second)
	if err := s.VerifyParam(2, msg, tokenParam(t, s, 2, tok, msg)); !errors.Is(err, ctap.StatusPINAuthInvalid) {
		t.Fatalf("token unused past the initial usage limit: %v", err)
	}

	tok = s.IssueToken(PermGetAssertion, "")
	clk.Advance(InitialUsageLimit - time.Second)
	if err := s.VerifyParam(1, msg, tokenParam(t, s, 1, tok, msg)); err != nil {
		t.Fatalf("fresh token: %v", err)
	}
	clk.Advance(MaxUsagePeriod - InitialUsageLimit) // used: still alive
	if err := s.Authorize(PermGetAssertion, "x.example"); err != nil {
		t.Fatalf("used token before the max usage period: %v", err)
	}
	clk.Advance(2 * time.Second)
	if err := s.VerifyParam(2, msg, tokenParam(t, s, 2, tok, msg)); !errors.Is(err, ctap.StatusPINAuthInvalid) {
		t.Fatalf("token past the max usage period: %v", err)
	}
	if err := s.Authorize(PermGetAssertion, ""); !errors.Is(err, ctap.StatusPINAuthInvalid) {
		t.Fatalf("expired token authorized: %v", err)
	}
}

func TestTokenInvalidation(t *testing.T) {
	s, _ := newTestState(t)
	msg := []byte{0x01}
	old := s.IssueToken(PermCredentialManagement, "")
	tok := s.IssueToken(PermCredentialManagement, "")
	if bytes.Equal(old, tok) {
		t.Fatal("two tokens are equal")
	}
	if err := s.VerifyParam(2, msg, tokenParam(t, s, 2, old, msg)); !errors.Is(err, ctap.StatusPINAuthInvalid) {
		t.Fatalf("superseded token accepted: %v", err)
	}
	if err := s.VerifyParam(2, msg, tokenParam(t, s, 2, tok, msg)); err != nil {
		t.Fatal(err)
	}
	before, _ := s.KeyAgreement(2)
	if err := s.Regenerate(); err != nil {
		t.Fatal(err)
	}
	after, _ := s.KeyAgreement(2)
	if bytes.Equal(before.X, after.X) {
		t.Fatal("Regenerate kept the key-agreement key")
	}
	if err := s.VerifyParam(2, msg, tokenParam(t, s, 2, tok, msg)); !errors.Is(err, ctap.StatusPINAuthInvalid) {
		t.Fatalf("token survived Regenerate: %v", err)
	}
	tok = s.IssueToken(PermCredentialManagement, "")
	s.ResetToken()
	if err := s.VerifyParam(1, msg, tokenParam(t, s, 1, tok, msg)); !errors.Is(err, ctap.StatusPINAuthInvalid) {
		t.Fatalf("token survived ResetToken: %v", err)
	}
	if again, _ := s.KeyAgreement(1); !bytes.Equal(again.X, after.X) {
		t.Fatal("ResetToken changed the key-agreement key")
	}
}

func TestPermissionsAndBinding(t *testing.T) {
	s, _ := newTestState(t)
	if err := s.Authorize(PermGetAssertion, ""); !errors.Is(err, ctap.StatusPINAuthInvalid) {
		t.Fatalf("no token, Authorize = %v", err)
	}
	s.IssueToken(PermMakeCredential|PermGetAssertion, "")
	if err := s.Authorize(PermCredentialManagement, ""); !errors.Is(err, ctap.StatusPINAuthInvalid) {
		t.Fatalf("cm without permission: %v", err)
	}
	if err := s.AuthorizeUnbound(PermGetAssertion); err != nil {
		t.Fatalf("unbound token: %v", err)
	}
	if err := s.Authorize(PermMakeCredential, "a.example"); err != nil {
		t.Fatalf("first use binds: %v", err)
	}
	if err := s.Authorize(PermGetAssertion, "b.example"); !errors.Is(err, ctap.StatusPINAuthInvalid) {
		t.Fatalf("token bound to a.example used for b.example: %v", err)
	}
	if err := s.Authorize(PermGetAssertion, "a.example"); err != nil {
		t.Fatal(err)
	}
	if err := s.AuthorizeUnbound(PermGetAssertion); !errors.Is(err, ctap.StatusPINAuthInvalid) {
		t.Fatalf("bound token passed AuthorizeUnbound: %v", err)
	}
	ha := sha256.Sum256([]byte("a.example"))
	hb := sha256.Sum256([]byte("b.example"))
	if err := s.AuthorizeRPIDHash(PermGetAssertion, ha[:]); err != nil {
		t.Fatal(err)
	}
	if err := s.AuthorizeRPIDHash(PermGetAssertion, hb[:]); !errors.Is(err, ctap.StatusPINAuthInvalid) {
		t.Fatalf("hash of another RP: %v", err)
	}
	s.ClearPermissionsExceptLBW()
	if err := s.Authorize(PermGetAssertion, "a.example"); !errors.Is(err, ctap.StatusPINAuthInvalid) {
		t.Fatalf("permission survived ClearPermissionsExceptLBW: %v", err)
	}

	s.IssueToken(PermCredentialManagement|PermLargeBlobWrite, "")
	if err := s.AuthorizeRPIDHash(PermCredentialManagement, hb[:]); err != nil {
		t.Fatal(err)
	}
	if err := s.AuthorizeUnbound(PermCredentialManagement); err != nil {
		t.Fatalf("AuthorizeRPIDHash bound the token: %v", err)
	}
	s.ClearPermissionsExceptLBW()
	if err := s.Authorize(PermLargeBlobWrite, ""); err != nil {
		t.Fatalf("lbw dropped: %v", err)
	}
}

func TestPowerCycleFlag(t *testing.T) {
	s, _ := newTestState(t)
	if s.PowerCycleRequired() {
		t.Fatal("fresh state needs a power cycle")
	}
	s.NotePINAuthBlocked()
	if err := s.Regenerate(); err != nil {
		t.Fatal(err)
	}
	if !s.PowerCycleRequired() {
		t.Fatal("flag lost")
	}
	s.ClearPINAuthBlocked()
	if s.PowerCycleRequired() {
		t.Fatal("flag not cleared")
	}
}

type failingReader struct{}

func (failingReader) Read([]byte) (int, error) { return 0, errors.New("no entropy") }

func TestIssueTokenRandomFailure(t *testing.T) {
	s, err := NewState(failingReader{}, nil)
	if err != nil {
		// Key generation may use its own randomness; the token must not.
		t.Logf("NewState: %v", err)
		return
	}
	if tok := s.IssueToken(PermGetAssertion, ""); tok != nil {
		t.Fatal("token issued without randomness")
	}
	if err := s.Authorize(PermGetAssertion, ""); !errors.Is(err, ctap.StatusPINAuthInvalid) {
		t.Fatalf("Authorize after failed issue: %v", err)
	}
}

func TestConcurrentUse(t *testing.T) {
	s, _ := newTestState(t)
	var wg sync.WaitGroup
	for i := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for j := range 50 {
				switch (i + j) % 5 {
				case 0:
					tok := s.IssueToken(PermGetAssertion, "")
					_ = s.VerifyParam(2, []byte{1}, tokenParam(t, s, 2, tok, []byte{1}))
				case 1:
					_ = s.Authorize(PermGetAssertion, "a.example")
				case 2:
					_, _ = s.KeyAgreement(1)
				case 3:
					p, _ := s.Protocol(2)
					plat, _ := ecdh.P256().GenerateKey(rand.Reader)
					_, _ = p.SharedSecret(platformCOSE(plat))
				case 4:
					_ = s.Regenerate()
				}
			}
		}()
	}
	wg.Wait()
}

// TestUVSecretLifetime: the secret given with a token (the PIN hash the
// key store needs for PIN-bound keys) is there exactly while the token
// is: it goes with expiry, a new token, Regenerate and ResetToken.
func TestUVSecretLifetime(t *testing.T) {
	s, clk := newTestState(t)
	secret := []byte("0123456789abcdef")
	if _, ok := s.UVSecret(); ok {
		t.Fatal("a secret before any token")
	}
	s.IssueTokenWithSecret(PermGetAssertion, "", secret)
	got, ok := s.UVSecret()
	if !ok || !bytes.Equal(got, secret) {
		t.Fatalf("UVSecret %x %v", got, ok)
	}
	got[0] ^= 1 // a copy: the caller may clear it
	if again, _ := s.UVSecret(); !bytes.Equal(again, secret) {
		t.Fatal("UVSecret returned the State's own slice")
	}
	s.ClearPermissionsExceptLBW() // the token lives on, so does the secret
	if _, ok := s.UVSecret(); !ok {
		t.Fatal("secret gone with the permissions")
	}
	for name, end := range map[string]func(){
		"expiry":       func() { clk.Advance(InitialUsageLimit + time.Second) },
		"a new token":  func() { s.IssueToken(PermGetAssertion, "") },
		"Regenerate":   func() { s.Regenerate() },
		"ResetToken":   func() { s.ResetToken() },
		"another user": func() { s.IssueTokenWithSecret(PermGetAssertion, "", nil) },
	} {
		s.IssueTokenWithSecret(PermGetAssertion, "", secret)
		end()
		if got, ok := s.UVSecret(); ok {
			t.Errorf("after %s: secret %x still there", name, got)
		}
	}
}

func TestPINPolicy(t *testing.T) {
	for pin, want := range map[string]string{
		"1234":                    "",
		"123":                     "at least 4",
		"ééé":                     "at least 4", // 6 bytes, 3 code points
		"éééé":                    "",
		strings.Repeat("x", 63):   "",
		strings.Repeat("x", 64):   "at most 63",
		strings.Repeat("é", 32):   "at most 63", // 32 code points, 64 bytes
		"12\xff4":                 "UTF-8",
		"":                        "at least 4",
		"\x00\x00\x00\x00\x00abc": "",
	} {
		err := CheckPIN([]byte(pin))
		if want == "" {
			if err != nil {
				t.Errorf("%q: %v", pin, err)
			}
			continue
		}
		var pe *PolicyError
		if !errors.As(err, &pe) || !errors.Is(err, ctap.StatusPINPolicyViolation) || !strings.Contains(err.Error(), want) {
			t.Errorf("%q: err = %v, want a policy error saying %q", pin, err, want)
		}
	}
}

func TestPINHash(t *testing.T) {
	// SHA-256("1234") = 03ac6742 16f3e15c 761ee1a5 e255f067 953623c8 ...
	want, _ := hex.DecodeString("03ac674216f3e15c761ee1a5e255f067")
	if h := PINHash([]byte("1234")); !bytes.Equal(h[:], want) {
		t.Fatalf("PINHash(1234) = %x, want %x", h, want)
	}
}

// fakeTimers records the timers a State arms; the test fires them.
type fakeTimers struct {
	mu     sync.Mutex
	armed  []*fakeTimer
	active int // armed and neither fired nor stopped
}

type fakeTimer struct {
	d       time.Duration
	f       func()
	stopped bool
	fired   bool
}

func (ft *fakeTimers) afterFunc(d time.Duration, f func()) func() bool {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	t := &fakeTimer{d: d, f: f}
	ft.armed = append(ft.armed, t)
	ft.active++
	return func() bool {
		ft.mu.Lock()
		defer ft.mu.Unlock()
		if t.stopped || t.fired {
			return false
		}
		t.stopped = true
		ft.active--
		return true
	}
}

// fire runs the last timer armed, as the runtime would when it is due.
func (ft *fakeTimers) fire(t *testing.T) {
	t.Helper()
	ft.mu.Lock()
	if len(ft.armed) == 0 {
		ft.mu.Unlock()
		t.Fatal("no timer was armed")
	}
	tm := ft.armed[len(ft.armed)-1]
	if tm.stopped || tm.fired {
		ft.mu.Unlock()
		t.Fatal("the last timer was stopped or has fired")
	}
	tm.fired = true
	ft.active--
	ft.mu.Unlock()
	tm.f()
}

func (ft *fakeTimers) state() (n, active int, last time.Duration) {
	ft.mu.Lock()
	defer ft.mu.Unlock()
	if len(ft.armed) > 0 {
		last = ft.armed[len(ft.armed)-1].d
	}
	return len(ft.armed), ft.active, last
}

func zeroed(b []byte) bool { return len(b) > 0 && bytes.Count(b, []byte{0}) == len(b) }

// TestTokenWipedAtExpiry: the token and the PIN hash kept with it are
// zeroed in memory when the token expires, with no request coming in to
// look at it; one timer is armed while a token lives and none while
// none does.
func TestTokenWipedAtExpiry(t *testing.T) {
	clk := ctap2test.NewClock(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
	ft := &fakeTimers{}
	s, err := NewStateTimer(nil, clk.Now, ft.afterFunc)
	if err != nil {
		t.Fatal(err)
	}
	if n, _, _ := ft.state(); n != 0 {
		t.Fatalf("%d timers armed with no token (an idle daemon arms none)", n)
	}
	secret := bytes.Repeat([]byte{0xA5}, 16)

	// Never used: wiped InitialUsageLimit after issue.
	s.IssueTokenWithSecret(PermGetAssertion, "", secret)
	tok, sec := s.token, s.uvSecret // the State's own memory
	if n, active, d := ft.state(); n != 1 || active != 1 || d != InitialUsageLimit {
		t.Fatalf("after issue: %d timers, %d active, last %s; want 1, 1, %s", n, active, d, InitialUsageLimit)
	}
	clk.Advance(InitialUsageLimit)
	ft.fire(t)
	if !zeroed(tok) || !zeroed(sec) || s.token != nil || s.uvSecret != nil {
		t.Fatalf("after expiry, with no request: token %x, secret %x still in memory", tok, sec)
	}
	if _, active, _ := ft.state(); active != 0 {
		t.Fatalf("%d timers still armed after the token ended", active)
	}

	// Used: lives until MaxUsagePeriod after issue; the first timer
	// re-arms for the rest.
	tokB := s.IssueTokenWithSecret(PermGetAssertion, "", secret)
	tok, sec = s.token, s.uvSecret
	msg := []byte("message")
	if err := s.VerifyParam(2, msg, protocolTwo{}.Authenticate(tokB, msg)); err != nil {
		t.Fatal(err)
	}
	clk.Advance(InitialUsageLimit + time.Second)
	ft.fire(t)
	if zeroed(tok) || zeroed(sec) {
		t.Fatal("a used token was wiped at the initial usage limit")
	}
	if n, active, d := ft.state(); n != 3 || active != 1 || d != MaxUsagePeriod-InitialUsageLimit-time.Second {
		t.Fatalf("after the first deadline of a used token: %d timers, %d active, last %s", n, active, d)
	}
	clk.Advance(MaxUsagePeriod - InitialUsageLimit - time.Second)
	ft.fire(t)
	if !zeroed(tok) || !zeroed(sec) || s.token != nil {
		t.Fatalf("after MaxUsagePeriod: token %x, secret %x still in memory", tok, sec)
	}

	// A token ended early disarms its timer; a late run of an old
	// timer leaves the next token alone.
	s.IssueTokenWithSecret(PermGetAssertion, "", secret)
	ft.mu.Lock()
	old := ft.armed[len(ft.armed)-1]
	ft.mu.Unlock()
	s.IssueTokenWithSecret(PermGetAssertion, "", secret)
	tok = s.token
	if !old.stopped {
		t.Fatal("a new token left the old token's timer armed")
	}
	clk.Advance(time.Second)
	old.f() // fired although stopped (it was already running)
	if zeroed(tok) || s.token == nil {
		t.Fatal("an old token's timer wiped the current token")
	}
	s.ResetToken()
	if _, active, _ := ft.state(); active != 0 || !zeroed(tok) {
		t.Fatalf("ResetToken: %d timers still armed, token zeroed %v", active, zeroed(tok))
	}
}

// TestTokenWipedByRealTimer: the default timer (time.AfterFunc) wipes
// an expired token too. The token's issue time is moved back by its
// initial usage limit and its timer re-armed, so it is due at once.
func TestTokenWipedByRealTimer(t *testing.T) {
	s, _ := newTestState(t)
	s.IssueTokenWithSecret(PermGetAssertion, "", []byte("0123456789abcdef"))
	s.mu.Lock()
	sec := s.uvSecret
	s.issued = s.issued.Add(-InitialUsageLimit)
	s.disarm()
	s.armLocked()
	s.mu.Unlock()
	for range 200 {
		s.mu.Lock()
		done := s.token == nil
		s.mu.Unlock()
		if done {
			if !zeroed(sec) {
				t.Fatalf("token ended but the secret %x is still in memory", sec)
			}
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatal("the real timer did not wipe the expired token within 1 s")
}
