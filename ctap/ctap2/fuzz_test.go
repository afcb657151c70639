package ctap2_test

import (
	"crypto/ecdh"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/tpm-fido/tpm-fido/ctap"
)

var updateSeeds = flag.Bool("update-fuzz-seeds", false, "rewrite testdata/fuzz/FuzzHandleRequest from fuzzSeeds")

// fuzzSeeds returns one or more valid requests per command byte.
func fuzzSeeds(t testing.TB) map[string][]byte {
	req := func(cmd byte, params map[int]any) []byte {
		out := []byte{cmd}
		if params != nil {
			out = append(out, enc(t, params)...)
		}
		return out
	}
	// A fixed valid platform key for the hmac-secret and clientPIN seeds.
	priv, err := ecdh.P256().NewPrivateKey(append(make([]byte, 31), 7))
	if err != nil {
		t.Fatal(err)
	}
	pb := priv.PublicKey().Bytes()
	platformKey := map[int]any{1: 2, 3: -25, -1: 1, -2: pb[1:33], -3: pb[33:]}
	h := cdh("seed")
	mcFull := mcRequest(mcOpts{rk: true, credProtect: 2, hmacSecret: true, exclude: [][]byte{[]byte("excluded-id")}}, h)
	mcZero := mcRequest(mcOpts{}, h)
	mcZero[8], mcZero[9] = []byte{}, 2
	mcToken := mcRequest(mcOpts{token: make([]byte, 32)}, h)
	return map[string][]byte{
		"getInfo":           req(cGetInfo, nil),
		"makeCredential":    req(cMakeCredential, mcRequest(mcOpts{}, h)),
		"makeCredentialAll": req(cMakeCredential, mcFull),
		"makeCredentialSel": req(cMakeCredential, mcZero),
		"makeCredentialUV":  req(cMakeCredential, mcToken),
		"getAssertionAllow": req(cGetAssertion, map[int]any{1: "example.org", 2: h, 3: allowList(make([]byte, 64)),
			5: map[string]bool{"up": false}}),
		"getAssertionRK": req(cGetAssertion, map[int]any{1: "example.org", 2: h}),
		"getAssertionHS": req(cGetAssertion, map[int]any{1: "example.org", 2: h, 3: allowList([]byte("x")),
			4: map[string]any{"hmac-secret": map[int]any{1: platformKey, 2: make([]byte, 48), 3: make([]byte, 32), 4: 2}}}),
		"getAssertionUV":   req(cGetAssertion, map[int]any{1: "example.org", 2: h, 6: make([]byte, 32), 7: 2}),
		"getNextAssertion": req(cGetNextAssertion, nil),
		"reset":            req(cReset, nil),
		"selection":        req(cSelection, nil),
		"clientPINRetries": req(cClientPIN, map[int]any{1: 2, 2: 1}),
		"clientPINKA":      req(cClientPIN, map[int]any{1: 1, 2: 2}),
		"clientPINSet":     req(cClientPIN, map[int]any{1: 2, 2: 3, 3: platformKey, 4: make([]byte, 32), 5: make([]byte, 80)}),
		"clientPINToken": req(cClientPIN, map[int]any{1: 2, 2: 9, 3: platformKey, 6: make([]byte, 32),
			9: 3, 10: "example.org"}),
		"credMgmtMetadata": req(0x0A, map[int]any{1: 1, 3: 2, 4: make([]byte, 32)}),
		"credMgmtPreview":  req(0x41, map[int]any{1: 2, 3: 2, 4: make([]byte, 32)}),
	}
}

// TestFuzzSeedsCurrent checks (or, with -update-fuzz-seeds, rewrites) the
// seed corpus files.
func TestFuzzSeedsCurrent(t *testing.T) {
	dir := filepath.Join("testdata", "fuzz", "FuzzHandleRequest")
	for name, b := range fuzzSeeds(t) {
		want := fmt.Sprintf("go test fuzz v1\n[]byte(%q)\n", b)
		path := filepath.Join(dir, name)
		if *updateSeeds {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(want), 0o644); err != nil {
				t.Fatal(err)
			}
			continue
		}
		got, err := os.ReadFile(path)
		if err != nil {
			t.Errorf("seed %s: %v (run with -update-fuzz-seeds)", name, err)
			continue
		}
		// Seeds with random parts (protocol 2 IVs) do not occur here, so
		// the files must match exactly; byte-for-byte drift means the
		// request encoding changed.
		if string(got) != want {
			t.Errorf("seed %s is stale (run with -update-fuzz-seeds)", name)
		}
	}
}

// FuzzHandleRequest feeds arbitrary CTAP2 requests to a fresh
// authenticator. It must never panic, always answer with a status, keep
// to the response size limits and emit only canonical CBOR; and sent from
// another channel, it must not continue a getNextAssertion walk.
func FuzzHandleRequest(f *testing.F) {
	// The seed corpus is testdata/fuzz/FuzzHandleRequest (see
	// TestFuzzSeedsCurrent).
	f.Fuzz(func(t *testing.T, req []byte) {
		e := newEnv(t)
		st, _ := e.rawCall(req)
		if st == ctap.StatusOther && len(req) > 0 && req[0] != 0x06 && req[0] != 0x0A && req[0] != 0x41 {
			t.Fatalf("CTAP2_ERR_OTHER (internal error) for % x; log: %s", req, e.logs.String())
		}
		// A second request exercises any state the first one left.
		e.rawCall([]byte{cGetNextAssertion})
		// State belongs to its channel: channel 1 starts a walk over two
		// accounts; whatever channel 2 sends cannot continue it, and
		// after channel 2 has spoken channel 1 cannot either.
		w := newEnv(t)
		w.makeCredential(mcOpts{rk: true, user: "a"})
		w.makeCredential(mcOpts{rk: true, user: "b"})
		if st, m := w.call(cGetAssertion, map[int]any{1: "example.org", 2: cdh("walk")}); st != ctap.StatusOK || m[5] == nil {
			t.Fatalf("walk not started: %v", st)
		}
		w.CID = 2
		if st, _ := w.rawCall(req); len(req) > 0 && req[0] == cGetNextAssertion && st == ctap.StatusOK {
			t.Fatalf("getNextAssertion % x from another channel continued the walk: %v", req, st)
		}
		w.CID = 1
		if st, _ := w.rawCall([]byte{cGetNextAssertion}); st != ctap.StatusNotAllowed {
			t.Fatalf("getNextAssertion after another channel sent % x: %v, want NOT_ALLOWED", req, st)
		}
	})
}
