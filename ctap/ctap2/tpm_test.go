package ctap2_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/google/go-tpm/tpm2"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/tpmstore"
	"github.com/tpm-fido/tpm-fido/tpmstore/tpmsim"
	"github.com/tpm-fido/tpm-fido/tpmstore/tpmtest"
)

// simulatorStore opens the real TPM store on the in-process TPM simulator,
// behind a command counter, in a new state directory; both close when
// the test ends. It skips what in -short mode.
func simulatorStore(t *testing.T, what string) (*tpmstore.Store, *tpmtest.CountingTPM) {
	t.Helper()
	if testing.Short() {
		t.Skip(what + " skipped in -short mode")
	}
	sim, err := tpmsim.Open()
	if err != nil {
		t.Skipf("TPM simulator unavailable: %v", err)
	}
	t.Cleanup(func() { sim.Close() })
	counting := tpmtest.NewCountingTPM(sim)
	store, err := tpmstore.Open(tpmstore.Config{TPM: counting, Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("tpmstore.Open: %v", err)
	}
	t.Cleanup(func() { store.Close() })
	return store, counting
}

// TestWithTPMSimulator runs the authenticator on the real TPM store over
// the in-process TPM simulator.
func TestWithTPMSimulator(t *testing.T) {
	store, counting := simulatorStore(t, "TPM simulator test")
	e := newEnvWithStore(t, store)

	plain := e.makeCredential(mcOpts{user: "plain"})
	p := e.newPlatform(2)
	p.setPIN("4321")
	rk := e.makeCredential(mcOpts{user: "resident", rk: true, credProtect: 2, hmacSecret: true,
		token: p.token("4321", 0x01, "example.org")})
	if rk.auth.ext["credProtect"] != uint64(2) || rk.auth.ext["hmac-secret"] != true {
		t.Errorf("extensions %v", rk.auth.ext)
	}
	if len(rk.id) > 255 {
		t.Errorf("credential ID of %d bytes", len(rk.id))
	}
	pubs := map[string]*ecdsa.PublicKey{string(plain.id): plain.pub, string(rk.id): rk.pub}

	h := cdh("tpm")
	st, m := e.call(cGetAssertion, map[int]any{1: "example.org", 2: h, 3: allowList(plain.id)})
	wantStatus(t, "getAssertion", st, ctap.StatusOK)
	as := verifyAssertion(t, m, h, pubs)
	if as.auth.counter <= rk.auth.counter {
		t.Errorf("counter %d not above %d", as.auth.counter, rk.auth.counter)
	}

	// A warm assertion is one TPM command (the signature), also for a
	// discoverable credential named in the allowList, whose user id is
	// now looked up too (a database read, no TPM command).
	for _, c := range []credential{plain, rk} {
		e.call(cGetAssertion, map[int]any{1: "example.org", 2: h, 3: allowList(c.id)}) // warm up
		counting.Reset()
		st, m := e.call(cGetAssertion, map[int]any{1: "example.org", 2: h, 3: allowList(c.id)})
		wantStatus(t, "warm getAssertion", st, ctap.StatusOK)
		verifyAssertion(t, m, h, pubs)
		if n := counting.Total(); n != 1 {
			t.Errorf("warm getAssertion (credential %x…): %d TPM commands %v, want 1", c.id[:8], n, counting.Snapshot())
		}
	}

	// Foreign and other-RP IDs are rejected with no TPM command.
	counting.Reset()
	st, _ = e.call(cGetAssertion, map[int]any{1: "example.org", 2: h, 5: map[string]bool{"up": false},
		3: allowList(bytes.Repeat([]byte{0x42}, 80), []byte("short"))})
	wantStatus(t, "foreign IDs", st, ctap.StatusNoCredentials)
	st, _ = e.call(cGetAssertion, map[int]any{1: "other.example", 2: h, 5: map[string]bool{"up": false},
		3: allowList(plain.id, rk.id)})
	wantStatus(t, "other RP", st, ctap.StatusNoCredentials)
	if n := counting.Total(); n != 0 {
		t.Errorf("%d TPM commands for foreign credential IDs", n)
	}

	// Discoverable: level 2 needs UV.
	st, _ = e.call(cGetAssertion, map[int]any{1: "example.org", 2: h})
	wantStatus(t, "discoverable without UV", st, ctap.StatusNoCredentials)
	hsGet := func(tok []byte) []byte {
		t.Helper()
		pp := e.newPlatform(2)
		saltEnc := pp.Encrypt(bytes.Repeat([]byte{9}, 32))
		req := map[int]any{1: "example.org", 2: h, 4: map[string]any{"hmac-secret": map[int]any{
			1: pp.Key, 2: saltEnc, 3: ctaphidtest.Authenticate(2, pp.Shared, saltEnc), 4: 2}}}
		if tok != nil {
			req[6] = ctaphidtest.Authenticate(2, tok, h)
			req[7] = 2
		} else {
			req[3] = allowList(rk.id)
		}
		st, m := e.call(cGetAssertion, req)
		wantStatus(t, "getAssertion hmac-secret", st, ctap.StatusOK)
		as := verifyAssertion(t, m, h, pubs)
		if !bytes.Equal(as.credID, rk.id) {
			t.Fatal("wrong credential")
		}
		// One account: its user id, through the allowList too; no names.
		if id, _ := as.user["id"].([]byte); string(id) != "uid-resident" || len(as.user) != 1 {
			t.Errorf("user %v, want only id uid-resident", as.user)
		}
		out, _ := as.auth.ext["hmac-secret"].([]byte)
		return pp.decrypt(out)
	}
	a, b := hsGet(nil), hsGet(nil)
	uv := hsGet(p.token("4321", 0x02, "example.org"))
	if len(a) != 32 || !bytes.Equal(a, b) {
		t.Error("hmac-secret output not stable")
	}
	if bytes.Equal(a, uv) {
		t.Error("hmac-secret output independent of UV")
	}

	st, _ = e.call(cReset, nil)
	wantStatus(t, "reset", st, ctap.StatusOK)
	st, _ = e.call(cGetAssertion, map[int]any{1: "example.org", 2: h, 3: allowList(plain.id)})
	wantStatus(t, "after reset", st, ctap.StatusNoCredentials)
}

// TestVerifyRequiredOnTPM: a credProtect 3 credential on the TPM store is
// bound to the PIN: without a PIN it is not made (PIN_NOT_SET), with one
// it needs a pinUvAuthToken (PUAT_REQUIRED); its attestation and its
// user-verified assertions are signed in a TPM policy session with the
// PIN hash the token was issued with; the store refuses a plain Sign;
// after a PIN change it signs with the new PIN.
func TestVerifyRequiredOnTPM(t *testing.T) {
	store, counting := simulatorStore(t, "TPM simulator test")
	e := newEnvWithStore(t, store)

	st, _ := e.call(cMakeCredential, mcRequest(mcOpts{rp: "ssh:", credProtect: 3}, cdh("mc")))
	wantStatus(t, "credProtect 3 without a PIN", st, ctap.StatusPINNotSet)
	p := e.newPlatform(2)
	p.setPIN("4321")
	st, _ = e.call(cMakeCredential, mcRequest(mcOpts{rp: "ssh:", credProtect: 3}, cdh("mc")))
	wantStatus(t, "credProtect 3 without a token", st, ctap.StatusPUATRequired)
	c := e.makeCredential(mcOpts{rp: "ssh:", credProtect: 3, token: p.token("4321", 0x01, "ssh:")})
	if c.auth.flags&0x04 == 0 {
		t.Fatal("UV flag clear")
	}
	opened, err := store.OpenCredential(sha256.Sum256([]byte("ssh:")), c.id)
	if err != nil || !opened.PINBound {
		t.Fatalf("credential: %v, PIN-bound %v", err, opened != nil && opened.PINBound)
	}
	d := sha256.Sum256([]byte("x"))
	if _, err := store.Sign(opened, d[:]); !errors.Is(err, tpmstore.ErrPINRequired) {
		t.Fatalf("plain Sign of the PIN-bound key: %v", err)
	}
	pubs := map[string]*ecdsa.PublicKey{string(c.id): c.pub}
	ga := func(tok []byte) (ctap.Status, map[int]cbor.RawMessage) {
		h := cdh("ga")
		req := map[int]any{1: "ssh:", 2: h, 3: allowList(c.id)}
		if tok != nil {
			req[6] = ctaphidtest.Authenticate(2, tok, h)
			req[7] = 2
		}
		return e.call(cGetAssertion, req)
	}
	st, _ = ga(nil)
	wantStatus(t, "assertion without UV", st, ctap.StatusNoCredentials)
	tok := p.token("4321", 0x02, "ssh:")
	counting.Reset()
	st, m := ga(tok)
	wantStatus(t, "assertion with UV", st, ctap.StatusOK)
	as := verifyAssertion(t, m, cdh("ga"), pubs)
	t.Logf("user-verified assertion: %d TPM commands %v", counting.Total(), counting.Snapshot())
	if as.auth.flags&0x04 == 0 || counting.Count(tpm2.TPMCCPolicySecret) != 1 || counting.Count(tpm2.TPMCCStartAuthSession) != 1 {
		t.Fatalf("flags %#x, TPM commands %v: want a policy session with PolicySecret", as.auth.flags, counting.Snapshot())
	}

	wantStatus(t, "changePIN", p.changePIN("4321", "8765"), ctap.StatusOK)
	st, _ = ga(tok)
	wantStatus(t, "assertion with the token from before the change", st, ctap.StatusPINAuthInvalid)
	p = e.newPlatform(2)
	st, m = ga(p.token("8765", 0x02, "ssh:"))
	wantStatus(t, "assertion after the PIN change, new PIN", st, ctap.StatusOK)
	verifyAssertion(t, m, cdh("ga"), pubs)
}
