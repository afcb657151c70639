package security_test

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// tokenStatus asks for a token with pin and returns the CTAP status.
func tokenStatus(t *testing.T, ch *ctaphidtest.Channel, pin string) ctap.Status {
	t.Helper()
	s, err := ch.KeyAgreement()
	if err != nil {
		t.Fatal(err)
	}
	st, _, err := ch.Call(ctaphidtest.CmdClientPIN, ctaphidtest.TokenRequest(s, pin, 0x01, "a.example"))
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func wantRetries(t *testing.T, ch *ctaphidtest.Channel, want int) {
	t.Helper()
	n, err := ch.PINRetries()
	if err != nil {
		t.Fatal(err)
	}
	if n != want {
		t.Fatalf("pinRetries = %d, want %d", n, want)
	}
}

func wantPowerCycle(t *testing.T, ch *ctaphidtest.Channel, want bool) {
	t.Helper()
	_, pc, err := ch.PINRetriesState()
	if err != nil {
		t.Fatal(err)
	}
	if pc != want {
		t.Fatalf("powerCycleState = %v, want %v", pc, want)
	}
}

// daState reads the TPM's dictionary-attack counter and lockout flag.
func daState(t *testing.T, e *env) tpmstore.DAStatus {
	t.Helper()
	st, err := tpmstore.ReadDAStatus(e.tpm)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// Wrong PINs lock as CTAP 2.1 §6.5.5.7 says and the docs promise, on a
// TPM whose dictionary-attack policy allows enough failures (32, one
// forgiven every 600 s, as Windows provisions): each wrong PIN costs a
// retry (8 in all, persisted across restarts), three in a row block PIN
// use until a restart (PIN_AUTH_BLOCKED, even for the right PIN, with
// powerCycleState true), a restart allows tries again, and the eighth
// blocks it for good (PIN_BLOCKED).
func TestWrongPINsLock(t *testing.T) {
	for _, b := range backendNames {
		t.Run(b.name, func(t *testing.T) {
			e := newEnv(t, envOpts{da: windowsDA, swtpm: b.swtpm})
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
			wantPowerCycle(t, ch, true)

			e.restart()
			ch = e.channel()
			wantRetries(t, ch, 5)
			wantPowerCycle(t, ch, false)
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
			da := daState(t, e)
			t.Logf("TPM after 11 wrong PINs: %s", da)
			if da.InLockout || da.FailedTries != 11 {
				t.Fatalf("TPM dictionary-attack state %s, want 11 failures and no lockout", da)
			}
		})
	}
}

// With the TPM's default policy (3 failures, one forgiven every 1000 s)
// a FIDO PIN never locks the TPM: after two wrong PINs the daemon stops
// trying, answering PIN_AUTH_BLOCKED without spending a retry and with
// powerCycleState false (a restart does not help: only time does), and
// logs when the next try is possible. Ten more tries after a restart,
// the right PIN among them, change nothing; the TPM never sets
// TPMA_PERMANENT.inLockout.
func TestPINNeverLocksTPM(t *testing.T) {
	for _, b := range backendNames {
		t.Run(b.name, func(t *testing.T) {
			e := newEnv(t, envOpts{swtpm: b.swtpm})
			ch := e.channel()
			if err := ch.SetPIN("2580"); err != nil {
				t.Fatal(err)
			}
			check := func(what string, pin string, want ctap.Status) {
				t.Helper()
				before := daState(t, e)
				st := tokenStatus(t, ch, pin)
				after := daState(t, e)
				t.Logf("%s: %v; failedTries %d -> %d of %d, inLockout %v", what, st, before.FailedTries, after.FailedTries, after.MaxTries, after.InLockout)
				if st != want {
					t.Fatalf("%s: %v, want %v", what, st, want)
				}
				if after.InLockout {
					t.Fatalf("%s: the TPM is in lockout", what)
				}
			}
			check("wrong PIN 1", "0000", ctap.StatusPINInvalid)
			check("wrong PIN 2", "0000", ctap.StatusPINInvalid)
			check("wrong PIN 3", "0000", ctap.StatusPINAuthBlocked)
			wantRetries(t, ch, 6)
			wantPowerCycle(t, ch, false)
			if !bytes.Contains(e.logs.Bytes(), []byte("next try possible in about")) {
				t.Errorf("the log does not say when the next try is possible:\n%s", e.logs.Bytes())
			}
			e.restart()
			ch = e.channel()
			for i := range 10 {
				check(fmt.Sprintf("after restart, wrong PIN %d", i+1), "0000", ctap.StatusPINAuthBlocked)
			}
			check("after restart, right PIN", "2580", ctap.StatusPINAuthBlocked)
			wantRetries(t, ch, 6)
			wantPowerCycle(t, ch, false)
			if da := daState(t, e); da.FailedTries != 2 {
				t.Fatalf("failedTries %d, want 2", da.FailedTries)
			}
		})
	}
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
	sec := secrets{"PIN": []byte(pin), "PIN hash": ctaphidtest.PINHash(pin)}
	ch := e.channel()
	if err := ch.SetPIN(pin); err != nil {
		t.Fatalf("setPIN: %v", err)
	}
	// agree runs a key agreement and keeps its shared secret as use's.
	agree := func(use string) *ctaphidtest.Session {
		t.Helper()
		s, err := ch.KeyAgreement()
		if err != nil {
			t.Fatal(err)
		}
		sec["shared secret ("+use+")"] = s.Shared
		return s
	}
	// token gets a PIN token with perms for rpID over a key agreement of
	// its own, and keeps both secrets as use's.
	token := func(use string, perms uint8, rpID string) []byte {
		t.Helper()
		tok, err := ch.TokenWith(agree(use), pin, perms, rpID)
		if err != nil {
			t.Fatalf("token (%s): %v", use, err)
		}
		sec["token ("+use+")"] = tok
		return tok
	}
	tok := token("mc/ga", 0x01|0x02, "a.example")
	params := ctaphidtest.MakeCredentialParams("a.example", []byte("alice-user-id"), cdh("mc"), true, true, tok)
	ad, err := ch.MakeCredential(params)
	if err != nil {
		t.Fatalf("makeCredential rk hmac-secret: %v", err)
	}
	hs := agree("hmac-secret")
	salt := []byte("salt-0123456789-abcdefghijklmnop")
	sec["salt"] = salt
	ga := ctaphidtest.GetAssertionParams("a.example", cdh("ga"), true, ad.CredID)
	ga[4] = ctaphidtest.HMACSecretExt(hs, salt)
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
	// verify-required: a credProtect-3 credential, whose TPM key signs
	// only in a policy session given the PIN hash the daemon holds with
	// the token.
	mcTok := token("mc, verify-required", 0x01, "a.example")
	vr := ctaphidtest.MakeCredentialParams("a.example", []byte("bob-user-id"), cdh("mc-uv"), false, false, mcTok)
	vr[6] = map[string]any{"credProtect": 3}
	vad, err := ch.MakeCredential(vr)
	if err != nil {
		t.Fatalf("makeCredential credProtect 3: %v", err)
	}
	gaTok := token("ga, verify-required", 0x02, "a.example")
	vga := ctaphidtest.GetAssertionParams("a.example", cdh("ga-uv"), true, vad.CredID)
	vga[6] = ctaphidtest.Authenticate(2, gaTok, cdh("ga-uv"))
	vga[7] = 2
	vas, err := ch.GetAssertion(vga)
	if err != nil {
		t.Fatalf("getAssertion of the credProtect-3 credential with UV: %v", err)
	}
	if vas.AuthData.Flags&0x04 == 0 {
		t.Fatalf("the credProtect-3 assertion lacks UV: flags 0x%02x", vas.AuthData.Flags)
	}
	cmTok := token("credMgmt", 0x04, "")
	for _, sub := range []byte{0x01, 0x02} {
		st, _, err := ch.Call(ctaphidtest.CmdCredMgmt, map[int]any{1: sub, 3: 2, 4: ctaphidtest.Authenticate(2, cmTok, []byte{sub})})
		if err != nil || st != ctap.StatusOK {
			t.Fatalf("credentialManagement 0x%02x: %v %v", sub, st, err)
		}
	}
	return sec
}

// Debug logs of a full flow contain no PIN, PIN hash, token, shared
// secret, salt or hmac-secret output, in raw, hex, base64 or Go's
// byte-slice form.
// The flow includes signing with a verify-required (credProtect 3) key,
// which hands the PIN hash to the TPM, and the secrets the state keeps
// for the TPM objects (the anchor key's and the counter index's
// authValues) are searched for too.
func TestDebugLogsHoldNoSecrets(t *testing.T) {
	e := newEnv(t, envOpts{})
	sec := fullFlow(t, e)
	e.shutdown()
	for name, v := range stateSecrets(t, e.dir) {
		sec[name] = v
	}
	logs := e.logs.Bytes()
	if len(logs) == 0 {
		t.Fatal("nothing was logged at debug level; the test would prove nothing")
	}
	if !bytes.Contains(logs, []byte("signing with a PIN-bound key")) {
		t.Fatal("the verify-required key was not signed in a TPM policy session; the test would not cover that path")
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

// stateSecrets reads from the closed state the authValues of the TPM
// anchor key and counter index, and the wrapping salt.
func stateSecrets(t *testing.T, dir string) secrets {
	t.Helper()
	db, err := bolt.Open(tpmstore.StatePath(dir), 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	sec := secrets{}
	err = db.View(func(tx *bolt.Tx) error {
		m := tx.Bucket([]byte("meta"))
		if m == nil {
			return errors.New("no meta bucket")
		}
		for name, key := range map[string]string{
			"anchor key authValue":    "anchor.auth",
			"counter index authValue": "counter.auth",
			"wrapping salt":           "wrap.salt",
		} {
			v := m.Get([]byte(key))
			if len(v) != 32 {
				return fmt.Errorf("meta %q: %d bytes, want 32", key, len(v))
			}
			sec[name] = bytes.Clone(v)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("reading %s: %v", tpmstore.StatePath(dir), err)
	}
	return sec
}

// forms returns the encodings of v's first 8 bytes (or all of v if
// shorter) as they could appear in a log line.
func forms(v []byte) map[string]string {
	p := v[:min(len(v), 8)]
	b64 := base64.StdEncoding.EncodeToString(v)[:8]
	u64 := base64.RawURLEncoding.EncodeToString(v)[:8]
	dec := fmt.Sprint(p)
	// slog's text handler prints a []byte as a Go-quoted string.
	q := strconv.Quote(string(v))
	q = q[1 : len(q)-1]
	return map[string]string{
		"Go quoted":      q[:min(len(q), 16)],
		"raw":            string(p),
		"hex":            hex.EncodeToString(p),
		"base64":         b64,
		"base64url":      u64,
		"decimal list":   dec[:len(dec)-1],
		"hex with space": fmt.Sprintf("% x", p),
	}
}
