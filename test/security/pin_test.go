package security_test

import (
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"io/fs"
	"path/filepath"
	"strings"
	"syscall"
	"testing"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/test/load/fidoclient"
)

// tokenStatus asks for a token with pin and returns the CTAP status.
func tokenStatus(t *testing.T, ch *fidoclient.Channel, pin string) ctap.Status {
	t.Helper()
	s, err := ch.KeyAgreement()
	if err != nil {
		t.Fatal(err)
	}
	st, _, err := ch.Call(fidoclient.CmdClientPIN, fidoclient.TokenRequest(s, pin, 0x01, "a.example"))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func wantRetries(t *testing.T, ch *fidoclient.Channel, want int) {
	t.Helper()
	n, err := ch.PINRetries()
	if err != nil {
		t.Fatal(err)
	}
	if n != want {
		t.Fatalf("pinRetries = %d, want %d", n, want)
	}
}

// Wrong PINs lock as CTAP 2.1 §6.5.5.7 says and the docs promise: each
// wrong PIN costs a retry (8 in all, persisted across restarts), three in
// a row block PIN use until a restart (PIN_AUTH_BLOCKED, even for the
// right PIN), and the eighth blocks it for good (PIN_BLOCKED).
//
// The TPM's own dictionary-attack limit (3 tries on a fresh simulator)
// would trip first, so this test relaxes it on its private simulator;
// TestTPMLockoutIsNotAWrongPIN covers the strict setting.
func TestWrongPINsLock(t *testing.T) {
	e := newEnv(t, envOpts{relaxDA: true})
	ch := e.channel()
	if err := ch.SetPIN("2580"); err != nil {
		t.Fatal(err)
	}
	if st := tokenStatus(t, ch, "2580"); st != ctap.StatusOK {
		t.Fatalf("right PIN: %v", st)
	}
	for i, want := range []ctap.Status{ctap.StatusPINInvalid, ctap.StatusPINInvalid, ctap.StatusPINAuthBlocked} {
		if st := tokenStatus(t, ch, "0000"); st != want {
			t.Fatalf("wrong PIN %d: %v, want %v", i+1, st, want)
		}
	}
	if st := tokenStatus(t, ch, "2580"); st != ctap.StatusPINAuthBlocked {
		t.Fatalf("right PIN after 3 wrong: %v, want PIN_AUTH_BLOCKED until restart", st)
	}
	wantRetries(t, ch, 5)

	e.restart()
	ch = e.channel()
	wantRetries(t, ch, 5)
	if st := tokenStatus(t, ch, "2580"); st != ctap.StatusOK {
		t.Fatalf("right PIN after restart: %v", st)
	}
	wantRetries(t, ch, 8)

	// Eight wrong PINs, with restarts, exhaust the retries.
	var st ctap.Status
	for i := range 8 {
		if i > 0 && i%3 == 0 {
			e.restart()
			ch = e.channel()
		}
		st = tokenStatus(t, ch, "0000")
	}
	if st != ctap.StatusPINBlocked {
		t.Fatalf("8th wrong PIN: %v, want PIN_BLOCKED", st)
	}
	e.restart()
	ch = e.channel()
	if st := tokenStatus(t, ch, "2580"); st != ctap.StatusPINBlocked {
		t.Fatalf("right PIN once blocked, after restart: %v, want PIN_BLOCKED", st)
	}
	wantRetries(t, ch, 0)
}

// With the TPM's strict default (3 failures, then lockout) the TPM's
// refusal is PIN_AUTH_BLOCKED and costs no CTAP retry: a TPM lockout is
// never reported as a wrong PIN.
func TestTPMLockoutIsNotAWrongPIN(t *testing.T) {
	e := newEnv(t, envOpts{})
	ch := e.channel()
	if err := ch.SetPIN("2580"); err != nil {
		t.Fatal(err)
	}
	for range 3 {
		tokenStatus(t, ch, "0000")
	}
	e.restart()
	ch = e.channel()
	wantRetries(t, ch, 5)
	st := tokenStatus(t, ch, "2580")
	if st == ctap.StatusOK {
		t.Skip("this TPM allows more than 3 failures; the lockout path is not reachable here")
	}
	if st != ctap.StatusPINAuthBlocked {
		t.Fatalf("right PIN with the TPM in lockout: %v, want PIN_AUTH_BLOCKED", st)
	}
	wantRetries(t, ch, 5)
}

// After a full flow (PIN set, token, resident credential with
// hmac-secret) every directory in the state is 0700 and every file 0600,
// even with a umask of 0.
func TestStateFileModes(t *testing.T) {
	old := syscall.Umask(0)
	t.Cleanup(func() { syscall.Umask(old) })
	e := newEnv(t, envOpts{})
	e.dir = filepath.Join(e.dir, "state") // a directory the store must create
	e.restart()
	fullFlow(t, e)
	e.shutdown()
	n := 0
	err := filepath.WalkDir(e.dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		info, err := d.Info()
		if err != nil {
			return err
		}
		n++
		want := fs.FileMode(0o600)
		if d.IsDir() {
			want = 0o700
		}
		if info.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", path, info.Mode().Perm(), want)
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 2 {
		t.Fatalf("state directory holds %d entries; the flow wrote nothing?", n)
	}
	t.Logf("%d entries checked", n)
}

// secrets is what the platform knows that must never reach a log.
type secrets map[string][]byte

// fullFlow sets a PIN, gets tokens, makes a resident credential with
// hmac-secret, asserts with hmac-secret and runs credential management.
// It returns every secret it handled.
func fullFlow(t *testing.T, e *env) secrets {
	t.Helper()
	const pin = "Zq7-pin-9041"
	sec := secrets{"PIN": []byte(pin), "PIN hash": fidoclient.PINHash(pin)}
	ch := e.channel()
	if err := ch.SetPIN(pin); err != nil {
		t.Fatalf("setPIN: %v", err)
	}
	s, err := ch.KeyAgreement()
	if err != nil {
		t.Fatal(err)
	}
	sec["shared secret (token)"] = s.Shared
	tok, err := ch.TokenWith(s, pin, 0x01|0x02, "a.example")
	if err != nil {
		t.Fatalf("token: %v", err)
	}
	sec["token mc/ga"] = tok
	params := fidoclient.MakeCredentialParams("a.example", []byte("alice-user-id"), cdh("mc"), true, true, tok)
	ad, err := ch.MakeCredential(params)
	if err != nil {
		t.Fatalf("makeCredential rk hmac-secret: %v", err)
	}
	hs, err := ch.KeyAgreement()
	if err != nil {
		t.Fatal(err)
	}
	sec["shared secret (hmac-secret)"] = hs.Shared
	salt := []byte("salt-0123456789-abcdefghijklmnop")
	sec["salt"] = salt
	ga := fidoclient.GetAssertionParams("a.example", cdh("ga"), true, ad.CredID)
	ga[4] = fidoclient.HMACSecretExt(hs, salt)
	as, err := ch.GetAssertion(ga)
	if err != nil {
		t.Fatalf("getAssertion hmac-secret: %v", err)
	}
	if out, ok := as.AuthData.Extensions["hmac-secret"].([]byte); ok {
		if pt, err := hs.Decrypt(out); err == nil {
			sec["hmac-secret output"] = pt
		}
	} else {
		t.Fatalf("no hmac-secret output in %v", as.AuthData.Extensions)
	}
	cm, err := ch.KeyAgreement()
	if err != nil {
		t.Fatal(err)
	}
	sec["shared secret (credMgmt)"] = cm.Shared
	cmTok, err := ch.TokenWith(cm, pin, 0x04, "")
	if err != nil {
		t.Fatalf("credMgmt token: %v", err)
	}
	sec["token credMgmt"] = cmTok
	for _, sub := range []byte{0x01, 0x02} {
		st, _, err := ch.Call(fidoclient.CmdCredMgmt, map[int]any{1: sub, 3: 2, 4: fidoclient.Authenticate(cmTok, []byte{sub})})
		if err != nil || st != ctap.StatusOK {
			t.Fatalf("credentialManagement 0x%02x: %v %v", sub, st, err)
		}
	}
	return sec
}

// Debug logs of a full flow contain no PIN, PIN hash, token, shared
// secret, salt or hmac-secret output, in raw, hex, base64 or Go's
// byte-slice form.
func TestDebugLogsHoldNoSecrets(t *testing.T) {
	e := newEnv(t, envOpts{})
	sec := fullFlow(t, e)
	e.shutdown()
	logs := e.logs.Bytes()
	if len(logs) == 0 {
		t.Fatal("nothing was logged at debug level; the test would prove nothing")
	}
	lower := strings.ToLower(string(logs))
	found := 0
	for name, v := range sec {
		for form, needle := range forms(v) {
			if strings.Contains(lower, strings.ToLower(needle)) {
				found++
				t.Errorf("%s found in the logs as %s (%q)", name, form, needle)
			}
		}
	}
	if found == 0 {
		t.Logf("%d bytes of debug logs checked for %d secrets", len(logs), len(sec))
	}
	if found > 0 {
		t.Logf("captured logs:\n%s", logs)
	}
}

// forms returns the encodings of v's first 8 bytes (or all of v if
// shorter) as they could appear in a log line.
func forms(v []byte) map[string]string {
	p := v[:min(len(v), 8)]
	b64 := base64.StdEncoding.EncodeToString(v)[:8]
	u64 := base64.RawURLEncoding.EncodeToString(v)[:8]
	dec := fmt.Sprint(p)
	return map[string]string{
		"raw":            string(p),
		"hex":            hex.EncodeToString(p),
		"base64":         b64,
		"base64url":      u64,
		"decimal list":   dec[:len(dec)-1],
		"hex with space": fmt.Sprintf("% x", p),
	}
}
