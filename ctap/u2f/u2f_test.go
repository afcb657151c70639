package u2f_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"errors"
	"io"
	"log/slog"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/u2f"
	"github.com/tpm-fido/tpm-fido/presence"
	"github.com/tpm-fido/tpm-fido/tpmstore"
)

func quietLogger() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

func newHandler(t testing.TB, st *fakeStore, p presence.Prompter) *u2f.Handler {
	t.Helper()
	h, err := u2f.New(u2f.Config{Store: st, Presence: p, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	return h
}

// extAPDU builds an extended-length APDU with Le 0x0000, as libfido2 does.
func extAPDU(ins, p1 byte, data []byte) []byte {
	b := []byte{0, ins, p1, 0}
	if len(data) > 0 {
		b = append(b, 0, byte(len(data)>>8), byte(len(data)))
		b = append(b, data...)
	}
	return append(b, 0, 0)
}

// shortAPDU builds a short APDU with Le 0x00.
func shortAPDU(ins, p1 byte, data []byte) []byte {
	b := []byte{0, ins, p1, 0}
	if len(data) > 0 {
		b = append(b, byte(len(data)))
		b = append(b, data...)
	}
	return append(b, 0)
}

func split(t testing.TB, resp []byte) ([]byte, uint16) {
	t.Helper()
	if len(resp) < 2 {
		t.Fatalf("response %x has no status word", resp)
	}
	return resp[:len(resp)-2], binary.BigEndian.Uint16(resp[len(resp)-2:])
}

func do(t testing.TB, h *u2f.Handler, req []byte) ([]byte, uint16) {
	t.Helper()
	resp, err := h.Handle(context.Background(), ctap.Request{Cmd: ctap.CmdMsg, Payload: req})
	if err != nil {
		t.Fatalf("Handle: %v", err)
	}
	return split(t, resp)
}

type registration struct {
	pub  *ecdsa.PublicKey
	kh   []byte
	cert *x509.Certificate
}

// checkRegistration parses and verifies a REGISTER response independently
// of the handler (FIDO U2F Raw Message Formats §4.3).
func checkRegistration(t *testing.T, data []byte, app, challenge [32]byte) registration {
	t.Helper()
	if len(data) < 67 || data[0] != 0x05 {
		t.Fatalf("register response %x: want reserved byte 0x05", data)
	}
	pubBytes := data[1:66]
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), pubBytes)
	if err != nil {
		t.Fatalf("public key %x is not an uncompressed P-256 point: %v", pubBytes, err)
	}
	khLen := int(data[66])
	rest := data[67:]
	if len(rest) < khLen {
		t.Fatalf("key handle length %d exceeds response", khLen)
	}
	kh := rest[:khLen]
	rest = rest[khLen:]
	cert, err := x509.ParseCertificate(rest[:certLen(t, rest)])
	if err != nil {
		t.Fatalf("attestation certificate: %v", err)
	}
	sig := rest[certLen(t, rest):]
	if err := cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
		t.Fatalf("attestation certificate is not self-signed by its key: %v", err)
	}
	cpub, ok := cert.PublicKey.(*ecdsa.PublicKey)
	if !ok || !cpub.Equal(pub) {
		t.Fatal("attestation certificate is not for the credential key")
	}
	if cert.Subject.CommonName != "tpm-fido U2F" {
		t.Errorf("certificate subject %q", cert.Subject)
	}
	msg := append([]byte{0}, app[:]...)
	msg = append(msg, challenge[:]...)
	msg = append(msg, kh...)
	msg = append(msg, pubBytes...)
	dg := sha256.Sum256(msg)
	if !ecdsa.VerifyASN1(pub, dg[:], sig) {
		t.Fatal("registration signature does not verify")
	}
	return registration{pub: pub, kh: kh, cert: cert}
}

// certLen returns the length of the DER SEQUENCE at the start of b.
func certLen(t *testing.T, b []byte) int {
	t.Helper()
	if len(b) < 4 || b[0] != 0x30 || b[1] != 0x82 {
		t.Fatalf("certificate does not start with a long-form SEQUENCE: %x", b[:min(len(b), 4)])
	}
	n := 4 + int(binary.BigEndian.Uint16(b[2:4]))
	if n > len(b) {
		t.Fatalf("certificate length %d exceeds response", n)
	}
	return n
}

func authData(challenge, app [32]byte, kh []byte) []byte {
	d := append(append(append([]byte{}, challenge[:]...), app[:]...), byte(len(kh)))
	return append(d, kh...)
}

// checkAuthentication verifies an AUTHENTICATE response (§5.4).
func checkAuthentication(t *testing.T, data []byte, pub *ecdsa.PublicKey, app, challenge [32]byte) (flags byte, counter uint32) {
	t.Helper()
	if len(data) < 6 {
		t.Fatalf("authenticate response %x too short", data)
	}
	flags, counter = data[0], binary.BigEndian.Uint32(data[1:5])
	msg := append(append([]byte{}, app[:]...), data[:5]...)
	msg = append(msg, challenge[:]...)
	dg := sha256.Sum256(msg)
	if !ecdsa.VerifyASN1(pub, dg[:], data[5:]) {
		t.Fatal("authentication signature does not verify")
	}
	return flags, counter
}

func TestVersion(t *testing.T) {
	h := newHandler(t, newFakeStore(), presence.Fixed{Allow: true})
	for _, req := range [][]byte{
		{0, 3, 0, 0},                   // case 1
		{0, 3, 0, 0, 0},                // case 2 short, Le 00
		{0, 3, 0, 0, 0, 0, 0},          // case 2 extended, Le 0000
		{0, 3, 0, 0, 0, 0x01, 0},       // case 2 extended, Le 0100 (no Lc: not data)
		{0, 3, 0, 0, 0, 0, 0x40},       // case 2 extended, Le 0040
		{0, 3, 0, 0, 0, 0, 0, 0, 0},    // extended Lc 0000 then Le 0000 (libfido2, python-fido2, authenticator-rs)
		{0, 3, 0, 0, 0, 0, 0, 0x01, 0}, // the same with Le 0100
	} {
		data, sw := do(t, h, req)
		if sw != u2f.SWNoError || string(data) != "U2F_V2" {
			t.Errorf("VERSION %x = %q %04x, want U2F_V2 9000", req, data, sw)
		}
	}
	if _, sw := do(t, h, shortAPDU(3, 0, []byte{1})); sw != u2f.SWWrongLength {
		t.Errorf("VERSION with data: %04x, want 6700", sw)
	}
}

func TestRegisterAndAuthenticate(t *testing.T) {
	for _, enc := range []struct {
		name string
		f    func(byte, byte, []byte) []byte
	}{
		{"extended", extAPDU},
		{"short", shortAPDU},
		{"extended without Le", func(ins, p1 byte, data []byte) []byte { b := extAPDU(ins, p1, data); return b[:len(b)-2] }},
		{"short without Le", func(ins, p1 byte, data []byte) []byte { b := shortAPDU(ins, p1, data); return b[:len(b)-1] }},
	} {
		t.Run(enc.name, func(t *testing.T) {
			st := newFakeStore()
			h := newHandler(t, st, presence.Fixed{Allow: true})
			app := sha256.Sum256([]byte("https://example.com"))
			challenge := sha256.Sum256([]byte("register challenge"))
			data, sw := do(t, h, enc.f(0x01, 0x03, append(challenge[:], app[:]...)))
			if sw != u2f.SWNoError {
				t.Fatalf("REGISTER: %04x", sw)
			}
			reg := checkRegistration(t, data, app, challenge)

			c2 := sha256.Sum256([]byte("sign challenge"))
			var last uint32
			for i, tc := range []struct {
				p1        byte
				wantFlags byte
			}{{0x03, 0x01}, {0x08, 0x00}, {0x03, 0x01}} {
				data, sw := do(t, h, enc.f(0x02, tc.p1, authData(c2, app, reg.kh)))
				if sw != u2f.SWNoError {
					t.Fatalf("AUTHENTICATE P1 %#x: %04x", tc.p1, sw)
				}
				flags, ctr := checkAuthentication(t, data, reg.pub, app, c2)
				if flags != tc.wantFlags {
					t.Errorf("AUTHENTICATE P1 %#x: flags %#x, want %#x", tc.p1, flags, tc.wantFlags)
				}
				if i > 0 && ctr <= last {
					t.Errorf("counter %d after %d: not increasing", ctr, last)
				}
				last = ctr
			}
			// Check-only: ours → 6985, without signing.
			signs := st.signs
			if _, sw := do(t, h, enc.f(0x02, 0x07, authData(c2, app, reg.kh))); sw != u2f.SWConditionsNotSatisfied {
				t.Errorf("check-only with own key handle: %04x, want 6985", sw)
			}
			if st.signs != signs {
				t.Error("check-only signed something")
			}
			// Wrong appId, altered key handle: 6A80 for every P1.
			other := sha256.Sum256([]byte("https://evil.example"))
			bad := append([]byte(nil), reg.kh...)
			bad[len(bad)-1] ^= 1
			for _, p1 := range []byte{0x07, 0x03, 0x08} {
				if _, sw := do(t, h, enc.f(0x02, p1, authData(c2, other, reg.kh))); sw != u2f.SWWrongData {
					t.Errorf("P1 %#x, other appId: %04x, want 6A80", p1, sw)
				}
				if _, sw := do(t, h, enc.f(0x02, p1, authData(c2, app, bad))); sw != u2f.SWWrongData {
					t.Errorf("P1 %#x, altered key handle: %04x, want 6A80", p1, sw)
				}
			}
		})
	}
}

func TestRegistrationsUnlinkable(t *testing.T) {
	h := newHandler(t, newFakeStore(), presence.Fixed{Allow: true})
	app := sha256.Sum256([]byte("https://example.com"))
	var regs []registration
	for i := 0; i < 2; i++ {
		ch := sha256.Sum256([]byte{byte(i)})
		data, sw := do(t, h, extAPDU(1, 0, append(ch[:], app[:]...)))
		if sw != u2f.SWNoError {
			t.Fatalf("REGISTER: %04x", sw)
		}
		regs = append(regs, checkRegistration(t, data, app, ch))
	}
	a, b := regs[0].cert, regs[1].cert
	if a.SerialNumber.Cmp(b.SerialNumber) == 0 {
		t.Error("two attestation certificates share a serial number")
	}
	if bytes.Equal(a.RawSubjectPublicKeyInfo, b.RawSubjectPublicKeyInfo) {
		t.Error("two registrations share a key")
	}
	if a.Subject.String() != b.Subject.String() || a.Issuer.String() != b.Issuer.String() || !a.NotBefore.Equal(b.NotBefore) {
		t.Error("certificate fields other than key and serial differ between registrations")
	}
}

func TestStatusWords(t *testing.T) {
	st := newFakeStore()
	h := newHandler(t, st, presence.Fixed{Allow: true})
	app := sha256.Sum256([]byte("a"))
	ch := sha256.Sum256([]byte("c"))
	kh := make([]byte, 80)
	regData := append(ch[:], app[:]...)
	for _, tc := range []struct {
		name string
		req  []byte
		want uint16
	}{
		{"empty", nil, u2f.SWWrongLength},
		{"3 bytes", []byte{0, 3, 0}, u2f.SWWrongLength},
		{"CLA 0x80", []byte{0x80, 3, 0, 0}, u2f.SWCLANotSupported},
		{"INS 0x40", []byte{0, 0x40, 0, 0}, u2f.SWInsNotSupported},
		// CLA, then INS, are judged before the length, in any framing.
		{"CLA 0x80 alone", []byte{0x80}, u2f.SWCLANotSupported},
		{"CLA 0x80, unknown INS, bad length", []byte{0x80, 0x40, 0, 0, 5, 1}, u2f.SWCLANotSupported},
		{"INS 0x40, 2 bytes", []byte{0, 0x40}, u2f.SWInsNotSupported},
		{"INS 0x40, extended Lc beyond data", []byte{0, 0x40, 0, 0, 0, 0, 9, 1}, u2f.SWInsNotSupported},
		{"INS 0x40, python-fido2 framing", []byte{0, 0x40, 0, 0, 0, 0, 0, 0, 0}, u2f.SWInsNotSupported},
		{"INS 0xC0 (GET RESPONSE)", []byte{0, 0xC0, 0, 0, 0}, u2f.SWInsNotSupported},
		{"CLA 0x80, python-fido2 framing", []byte{0x80, 3, 0, 0, 0, 0, 0, 0, 0}, u2f.SWCLANotSupported},
		{"register 63 bytes", extAPDU(1, 0, regData[:63]), u2f.SWWrongLength},
		{"register 65 bytes", extAPDU(1, 0, append(regData, 0)), u2f.SWWrongLength},
		{"register no data", []byte{0, 1, 0, 0}, u2f.SWWrongLength},
		{"extended Lc beyond data", append([]byte{0, 1, 0, 0, 0, 0, 64}, regData[:60]...), u2f.SWWrongLength},
		{"extended Lc 0 then 1 byte", []byte{0, 3, 0, 0, 0, 0, 0, 1}, u2f.SWWrongLength},
		{"extended Lc 0 then 3 bytes", []byte{0, 3, 0, 0, 0, 0, 0, 1, 2, 3}, u2f.SWWrongLength},
		{"extended Lc with 1 byte of Le", append(append([]byte{0, 1, 0, 0, 0, 0, 64}, regData...), 0), u2f.SWWrongLength},
		{"00 then 1 byte", []byte{0, 3, 0, 0, 0, 0}, u2f.SWWrongLength},
		{"register, extended Lc 0 and Le", []byte{0, 1, 0, 0, 0, 0, 0, 0, 0}, u2f.SWWrongLength},
		{"short Lc beyond data", []byte{0, 1, 0, 0, 10, 1, 2}, u2f.SWWrongLength},
		{"authenticate P1 0x05", extAPDU(2, 0x05, authData(ch, app, kh)), u2f.SWWrongP1P2},
		{"authenticate kh length too long", extAPDU(2, 3, authData(ch, app, kh)[:100]), u2f.SWWrongLength},
		{"authenticate no kh length", extAPDU(2, 3, regData), u2f.SWWrongLength},
		{"authenticate unknown kh", extAPDU(2, 3, authData(ch, app, kh)), u2f.SWWrongData},
		{"authenticate empty kh", extAPDU(2, 3, authData(ch, app, nil)), u2f.SWWrongData},
	} {
		if _, sw := do(t, h, tc.req); sw != tc.want {
			t.Errorf("%s: %04x, want %04x", tc.name, sw, tc.want)
		}
	}
	if st.created != 0 {
		t.Errorf("malformed requests created %d credentials", st.created)
	}
}

func TestStoreFailureIsGenericError(t *testing.T) {
	st := newFakeStore()
	st.failNew = errors.New("tpm on fire")
	h := newHandler(t, st, presence.Fixed{Allow: true})
	app, ch := sha256.Sum256([]byte("a")), sha256.Sum256([]byte("c"))
	if _, sw := do(t, h, extAPDU(1, 0, append(ch[:], app[:]...))); sw != u2f.SWUnknown {
		t.Errorf("REGISTER with failing store: %04x, want 6F00", sw)
	}
}

// TestNilLoggerDiscards: without Config.Logger the handler logs nowhere,
// never to the process-wide default logger.
func TestNilLoggerDiscards(t *testing.T) {
	var buf bytes.Buffer
	old := slog.Default()
	slog.SetDefault(slog.New(slog.NewTextHandler(&buf, nil)))
	t.Cleanup(func() { slog.SetDefault(old) })
	st := newFakeStore()
	st.failNew = errors.New("tpm on fire")
	h, err := u2f.New(u2f.Config{Store: st, Presence: presence.Fixed{Allow: true}})
	if err != nil {
		t.Fatal(err)
	}
	app, ch := sha256.Sum256([]byte("a")), sha256.Sum256([]byte("c"))
	if _, sw := do(t, h, extAPDU(1, 0, append(ch[:], app[:]...))); sw != u2f.SWUnknown {
		t.Fatalf("REGISTER with failing store: %04x, want 6F00", sw)
	}
	if buf.Len() != 0 {
		t.Errorf("logged to the default logger: %q", buf.String())
	}
}

func TestCredProtectUVRequiredRefused(t *testing.T) {
	st := newFakeStore()
	h := newHandler(t, st, presence.Fixed{Allow: true})
	app, ch := sha256.Sum256([]byte("a")), sha256.Sum256([]byte("c"))
	data, sw := do(t, h, extAPDU(1, 0, append(ch[:], app[:]...)))
	if sw != u2f.SWNoError {
		t.Fatalf("REGISTER: %04x", sw)
	}
	reg := checkRegistration(t, data, app, ch)
	st.setCredProtect(reg.kh, tpmstore.CredProtectUVRequired)
	if _, sw := do(t, h, extAPDU(2, 3, authData(ch, app, reg.kh))); sw != u2f.SWWrongData {
		t.Errorf("credProtect 3 credential over U2F: %04x, want 6A80", sw)
	}
}

func TestDeniedPresence(t *testing.T) {
	st := newFakeStore()
	p := &countingPrompter{answer: presence.ErrDenied}
	h := newHandler(t, st, p)
	app, ch := sha256.Sum256([]byte("a")), sha256.Sum256([]byte("c"))
	for i := 0; i < 3; i++ {
		if _, sw := do(t, h, extAPDU(1, 0, append(ch[:], app[:]...))); sw != u2f.SWConditionsNotSatisfied {
			t.Fatalf("REGISTER denied: %04x, want 6985", sw)
		}
	}
	if st.created != 0 {
		t.Error("a denied registration created a credential")
	}
	if n := p.calls(); n != 1 {
		t.Errorf("client polling after a denial opened %d prompts, want 1", n)
	}
	// Another appId is asked afresh.
	other := sha256.Sum256([]byte("b"))
	do(t, h, extAPDU(1, 0, append(ch[:], other[:]...)))
	if n := p.calls(); n != 2 {
		t.Errorf("a different appId reused a denial: %d prompts, want 2", n)
	}
}

// countingPrompter answers immediately and counts prompts.
type countingPrompter struct {
	mu     sync.Mutex
	n      int
	answer error
	reqs   []presence.Request
}

func (c *countingPrompter) Confirm(ctx context.Context, r presence.Request) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.n++
	c.reqs = append(c.reqs, r)
	return c.answer
}

func (c *countingPrompter) calls() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n
}

// gatedPrompter blocks each prompt until the test answers it.
type gatedPrompter struct {
	opened  chan presence.Request
	answers chan error
	closed  chan error // receives ctx.Err() when a prompt is closed unanswered
}

func newGatedPrompter() *gatedPrompter {
	return &gatedPrompter{opened: make(chan presence.Request, 8), answers: make(chan error), closed: make(chan error, 8)}
}

func (g *gatedPrompter) Confirm(ctx context.Context, r presence.Request) error {
	g.opened <- r
	select {
	case err := <-g.answers:
		return err
	case <-ctx.Done():
		g.closed <- ctx.Err()
		return ctx.Err()
	}
}

type clock struct {
	mu     sync.Mutex
	t      time.Time
	called chan struct{} // optional: one value per Now call
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.called != nil {
		c.called <- struct{}{}
	}
	return c.t
}
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// gatedHandler is the U2F handler with a 5 s approval window over a fake
// store, a prompter the test answers and a clock it moves.
func gatedHandler(t *testing.T) (*u2f.Handler, *fakeStore, *gatedPrompter, *clock) {
	t.Helper()
	st := newFakeStore()
	gp := newGatedPrompter()
	clk := &clock{t: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)}
	h, err := u2f.New(u2f.Config{Store: st, Presence: gp, Logger: quietLogger(), Now: clk.Now, ApprovalWindow: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	return h, st, gp, clk
}

func TestPollingClientSeesOnePrompt(t *testing.T) {
	h, _, gp, _ := gatedHandler(t)
	app, ch := sha256.Sum256([]byte("https://example.com")), sha256.Sum256([]byte("c"))
	reg := extAPDU(1, 0, append(ch[:], app[:]...))

	// The first request is cut short by the client while the prompt is open.
	ctx, cancel := context.WithCancel(context.Background())
	result := make(chan []byte)
	go func() {
		resp, _ := h.Handle(ctx, ctap.Request{Cmd: ctap.CmdMsg, Payload: reg})
		result <- resp
	}()
	r := <-gp.opened
	if r.Op != presence.OpRegister || r.RPID == "" {
		t.Errorf("prompt request %+v", r)
	}
	cancel()
	if _, sw := split(t, <-result); sw != u2f.SWConditionsNotSatisfied {
		t.Fatalf("cancelled request: %04x, want 6985", sw)
	}
	// The user says yes to the still open prompt; the client's retry of the
	// same request gets it without a second prompt.
	gp.answers <- nil
	data, sw := waitResult(t, h, reg, gp)
	if sw != u2f.SWNoError {
		t.Fatalf("retry after approval: %04x", sw)
	}
	checkRegistration(t, data, app, ch)

	// The approval was used up: the same request asks again.
	go func() {
		resp, _ := h.Handle(context.Background(), ctap.Request{Cmd: ctap.CmdMsg, Payload: reg})
		result <- resp
	}()
	<-gp.opened
	gp.answers <- nil
	if _, sw := split(t, <-result); sw != u2f.SWNoError {
		t.Fatalf("second registration: %04x", sw)
	}
}

// waitResult sends req once and fails if it opened a new prompt.
func waitResult(t *testing.T, h *u2f.Handler, req []byte, gp *gatedPrompter) ([]byte, uint16) {
	t.Helper()
	data, sw := do(t, h, req)
	select {
	case r := <-gp.opened:
		t.Fatalf("the retry opened a second prompt: %+v", r)
	default:
	}
	return data, sw
}

// abandonRegister starts a registration for app with challenge ch and
// cancels it, as CTAPHID_CANCEL does, while its prompt is open. It
// returns once Handle has returned, with the cancelled context.
func abandonRegister(h ctap.Handler, gp *gatedPrompter, app, ch [32]byte) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		h.Handle(ctx, ctap.Request{Cmd: ctap.CmdMsg, Payload: extAPDU(1, 0, append(ch[:], app[:]...))})
		close(done)
	}()
	<-gp.opened
	cancel()
	<-done
	return ctx
}

// deniedRequest sends req, denies the prompt it opens and returns the
// status word.
func deniedRequest(t *testing.T, h ctap.Handler, gp *gatedPrompter, req []byte) uint16 {
	t.Helper()
	result := make(chan uint16)
	go func() {
		resp, _ := h.Handle(context.Background(), ctap.Request{Cmd: ctap.CmdMsg, Payload: req})
		_, sw := split(t, resp)
		result <- sw
	}()
	<-gp.opened
	gp.answers <- presence.ErrDenied
	return <-result
}

func TestApprovalNotReusedAcrossRequests(t *testing.T) {
	h, st, gp, clk := gatedHandler(t)
	app, ch := sha256.Sum256([]byte("https://example.com")), sha256.Sum256([]byte("c"))
	other, ch2 := sha256.Sum256([]byte("https://other.example")), sha256.Sum256([]byte("c2"))

	// Leave an unconsumed approval behind: cancel, then answer yes.
	ctx := abandonRegister(h, gp, app, ch)
	gp.answers <- nil

	for _, tc := range []struct {
		name string
		req  []byte
	}{
		{"other appId", extAPDU(1, 0, append(ch[:], other[:]...))},
		{"other challenge", extAPDU(1, 0, append(ch2[:], app[:]...))},
	} {
		// A fresh prompt: the approval did not carry over.
		if sw := deniedRequest(t, h, gp, tc.req); sw != u2f.SWConditionsNotSatisfied {
			t.Errorf("%s: %04x, want 6985", tc.name, sw)
		}
	}
	if st.created != 0 {
		t.Errorf("%d credentials created without an approval of their own", st.created)
	}

	// An approval expires after the window. (ctx is cancelled already, so
	// the request returns at once and leaves the answer behind.)
	h.Handle(ctx, ctap.Request{Cmd: ctap.CmdMsg, Payload: extAPDU(1, 0, append(ch[:], app[:]...))})
	<-gp.opened
	clk.mu.Lock()
	clk.called = make(chan struct{}, 16)
	clk.mu.Unlock()
	gp.answers <- nil
	<-clk.called // the answer has been recorded
	clk.Add(6 * time.Second)
	if sw := deniedRequest(t, h, gp, extAPDU(1, 0, append(ch[:], app[:]...))); sw != u2f.SWConditionsNotSatisfied {
		t.Errorf("after the window: %04x, want 6985 (a fresh, denied prompt)", sw)
	}
}

func TestAbandonedPromptIsClosed(t *testing.T) {
	gp := newGatedPrompter()
	h, err := u2f.New(u2f.Config{Store: newFakeStore(), Presence: gp, Logger: quietLogger(), ApprovalWindow: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	abandonRegister(h, gp, sha256.Sum256([]byte("a")), sha256.Sum256([]byte("c")))
	// Nobody retries: the prompt must be closed (blocks until it is).
	if err := <-gp.closed; !errors.Is(err, context.Canceled) {
		t.Errorf("abandoned prompt closed with %v, want context.Canceled", err)
	}
}

func TestKeepaliveWhilePrompting(t *testing.T) {
	gp := newGatedPrompter()
	h, err := u2f.New(u2f.Config{Store: newFakeStore(), Presence: gp, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	statuses := make(chan ctap.KeepaliveStatus, 4)
	ctx := ctap.WithKeepalive(context.Background(), func(s ctap.KeepaliveStatus) { statuses <- s })
	app, ch := sha256.Sum256([]byte("a")), sha256.Sum256([]byte("c"))
	result := make(chan []byte)
	go func() {
		resp, _ := h.Handle(ctx, ctap.Request{Cmd: ctap.CmdMsg, Payload: extAPDU(1, 0, append(ch[:], app[:]...))})
		result <- resp
	}()
	r := <-gp.opened
	if s := <-statuses; s != ctap.KeepaliveUPNeeded {
		t.Errorf("keepalive status %d while prompting, want UPNEEDED", s)
	}
	if r.Op != presence.OpRegister || !strings.HasPrefix(r.RPID, "U2F site ") {
		t.Errorf("prompt %+v (%q)", r, r.Message())
	}
	gp.answers <- nil
	if _, sw := split(t, <-result); sw != u2f.SWNoError {
		t.Errorf("REGISTER: %04x", sw)
	}
}
