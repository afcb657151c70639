package ctap2_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2/ctap2test"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/presence"
)

func TestNewRequiresStoreAndPresence(t *testing.T) {
	if _, err := ctap2.New(ctap2.Config{Presence: presence.Fixed{}}); err == nil {
		t.Error("New without Store succeeded")
	}
	if _, err := ctap2.New(ctap2.Config{Store: ctap2test.NewFakeStore(1)}); err == nil {
		t.Error("New without Presence succeeded")
	}
}

func TestGetInfo(t *testing.T) {
	e := newEnv(t)
	st, m := e.call(cGetInfo, nil)
	wantStatus(t, "getInfo", st, ctap.StatusOK)
	versions := field[[]string](t, m, 1)
	if strings.Join(versions, ",") != "U2F_V2,FIDO_2_0,FIDO_2_1" {
		t.Errorf("versions %v", versions)
	}
	if ext := field[[]string](t, m, 2); strings.Join(ext, ",") != "credProtect,hmac-secret" {
		t.Errorf("extensions %v", ext)
	}
	if aaguid := field[[]byte](t, m, 3); !bytes.Equal(aaguid, ctap2.AAGUID[:]) || len(aaguid) != 16 {
		t.Errorf("aaguid % x", aaguid)
	}
	opts := field[map[string]bool](t, m, 4)
	want := map[string]bool{"rk": true, "up": true, "clientPin": false, "credMgmt": true,
		"credentialMgmtPreview": true, "pinUvAuthToken": true, "makeCredUvNotRqd": true}
	if len(opts) != len(want) {
		t.Errorf("options %v", opts)
	}
	for k, v := range want {
		if got, ok := opts[k]; !ok || got != v {
			t.Errorf("option %s = %v (present %v), want %v", k, got, ok, v)
		}
	}
	if _, ok := opts["uv"]; ok {
		t.Error("uv option advertised")
	}
	if v := field[int](t, m, 5); v != 7609 {
		t.Errorf("maxMsgSize %d", v)
	}
	if v := field[[]int](t, m, 6); len(v) != 2 || v[0] != 2 || v[1] != 1 {
		t.Errorf("pinUvAuthProtocols %v", v)
	}
	if v := field[int](t, m, 8); v < 16 || v > 255 {
		t.Errorf("maxCredentialIdLength %d", v)
	}
	if v := field[[]string](t, m, 9); len(v) != 1 || v[0] != "usb" {
		t.Errorf("transports %v", v)
	}
	algs := field[[]map[string]any](t, m, 10)
	if len(algs) != 1 || algs[0]["alg"] != int64(-7) || algs[0]["type"] != "public-key" {
		t.Errorf("algorithms %v", algs)
	}
	if v := field[int](t, m, 0x0E); v != ctap2.DefaultFirmwareVersion {
		t.Errorf("firmwareVersion %d", v)
	}
	if v := field[int](t, m, 0x14); v != 4 {
		t.Errorf("remainingDiscoverableCredentials %d, want 4", v)
	}

	// clientPin and the remaining count follow the store.
	e.newPlatform(2).setPIN("1234")
	e.makeCredential(mcOpts{rk: true, token: e.newPlatform(2).token("1234", 1, "example.org")})
	_, m = e.call(cGetInfo, nil)
	if !field[map[string]bool](t, m, 4)["clientPin"] {
		t.Error("clientPin false after setPIN")
	}
	if v := field[int](t, m, 0x14); v != 3 {
		t.Errorf("remainingDiscoverableCredentials %d after one rk, want 3", v)
	}
	st, _ = e.rawCall([]byte{cGetInfo, 0xa0})
	wantStatus(t, "getInfo with parameters", st, ctap.StatusInvalidLength)
}

func TestMakeCredentialAndAssert(t *testing.T) {
	e := newEnv(t)
	c := e.makeCredential(mcOpts{})
	if e.prompt.count() != 1 || e.prompt.last().Op != presence.OpRegister || e.prompt.last().RPID != "example.org" {
		t.Fatalf("prompts %v", e.prompt.reqs)
	}
	if c.auth.flags != 0x41 {
		t.Errorf("flags %#x, want UP|AT", c.auth.flags)
	}
	if !bytes.Equal(c.auth.aaguid, ctap2.AAGUID[:]) {
		t.Error("aaguid in authData")
	}
	if !c.pub.Equal(&e.fake.PrivateKey(c.id).PublicKey) {
		t.Error("attested key is not the credential's key")
	}
	pubs := map[string]*ecdsa.PublicKey{string(c.id): c.pub}

	last := c.auth.counter
	for i := range 3 {
		h := cdh("ga")
		st, m := e.call(cGetAssertion, map[int]any{1: "example.org", 2: h, 3: allowList([]byte("foreign"), c.id)})
		wantStatus(t, "getAssertion", st, ctap.StatusOK)
		as := verifyAssertion(t, m, h, pubs)
		if as.auth.flags != 0x01 {
			t.Errorf("flags %#x, want UP only", as.auth.flags)
		}
		if as.auth.counter <= last {
			t.Errorf("counter %d not above %d", as.auth.counter, last)
		}
		last = as.auth.counter
		if as.user != nil || as.count != 0 {
			t.Errorf("allowList assertion carries user %v / count %d", as.user, as.count)
		}
		if e.prompt.count() != 2+i || e.prompt.last().Op != presence.OpAuthenticate {
			t.Errorf("prompt %v", e.prompt.last())
		}
	}

	// up=false: no prompt, UP clear (how ssh probes).
	e.prompt.answer = failPrompt(t)
	h := cdh("probe")
	st, m := e.call(cGetAssertion, map[int]any{1: "example.org", 2: h, 3: allowList(c.id),
		5: map[string]bool{"up": false}})
	wantStatus(t, "getAssertion up=false", st, ctap.StatusOK)
	if as := verifyAssertion(t, m, h, pubs); as.auth.flags != 0 {
		t.Errorf("up=false flags %#x", as.auth.flags)
	}

	// The credential is bound to its RP: another RP does not see it.
	st, _ = e.call(cGetAssertion, map[int]any{1: "evil.example", 2: h, 3: allowList(c.id),
		5: map[string]bool{"up": false}})
	wantStatus(t, "other RP", st, ctap.StatusNoCredentials)
}

func TestMakeCredentialExtensions(t *testing.T) {
	e := newEnv(t)
	p := e.newPlatform(2)
	p.setPIN("4321") // a credProtect 3 key is bound to the PIN
	for _, tc := range []struct {
		o    mcOpts
		want map[string]any
	}{
		{mcOpts{credProtect: 1}, map[string]any{"credProtect": uint64(1)}},
		{mcOpts{credProtect: 2}, map[string]any{"credProtect": uint64(2)}},
		{mcOpts{credProtect: 3, hmacSecret: true}, map[string]any{"credProtect": uint64(3), "hmac-secret": true}},
		{mcOpts{hmacSecret: true}, map[string]any{"hmac-secret": true}},
	} {
		if tc.o.credProtect == 3 {
			tc.o.token = p.token("4321", 0x01, "example.org")
		}
		c := e.makeCredential(tc.o)
		if c.auth.flags&0x80 == 0 {
			t.Fatalf("%+v: ED clear", tc.o)
		}
		if len(c.auth.ext) != len(tc.want) {
			t.Errorf("%+v: extensions %v, want %v", tc.o, c.auth.ext, tc.want)
		}
		for k, v := range tc.want {
			if c.auth.ext[k] != v {
				t.Errorf("%+v: extension %s = %v, want %v", tc.o, k, c.auth.ext[k], v)
			}
		}
	}
	// An unknown extension and an out-of-range level are not echoed.
	h := cdh("x")
	req := mcRequest(mcOpts{}, h)
	req[6] = map[string]any{"credProtect": 7, "unknownExt": "x"}
	st, m := e.call(cMakeCredential, req)
	wantStatus(t, "unknown extension", st, ctap.StatusOK)
	if d := parseAuthData(t, field[[]byte](t, m, 2)); d.flags&0x80 != 0 {
		t.Errorf("ED set for unprocessed extensions: %v", d.ext)
	}
}

func TestRequestErrors(t *testing.T) {
	e := newEnv(t)
	good := func() map[int]any { return mcRequest(mcOpts{}, cdh("x")) }
	with := func(k int, v any) map[int]any { r := good(); r[k] = v; return r }
	without := func(k int) map[int]any { r := good(); delete(r, k); return r }
	gaGood := func() map[int]any { return map[int]any{1: "example.org", 2: cdh("x")} }
	gaWith := func(k int, v any) map[int]any { r := gaGood(); r[k] = v; return r }

	raw := []struct {
		name string
		req  []byte
		want ctap.Status
	}{
		{"empty", nil, ctap.StatusInvalidLength},
		{"unknown command", []byte{0x55}, ctap.StatusInvalidCommand},
		{"mc malformed", []byte{cMakeCredential, 0xa1, 0x01}, ctap.StatusInvalidCBOR},
		{"mc garbage", []byte{cMakeCredential, 0xff}, ctap.StatusInvalidCBOR},
		{"mc trailing", append(append([]byte{cMakeCredential}, enc(t, good())...), 0), ctap.StatusInvalidCBOR},
		{"mc not a map", []byte{cMakeCredential, 0x80}, ctap.StatusCBORUnexpectedType},
		{"mc text keys", append([]byte{cMakeCredential}, enc(t, map[string]int{"a": 1})...), ctap.StatusCBORUnexpectedType},
		{"mc duplicate key", []byte{cMakeCredential, 0xa2, 0x01, 0x40, 0x01, 0x40}, ctap.StatusInvalidCBOR},
		{"mc no params", []byte{cMakeCredential}, ctap.StatusMissingParameter},
		{"ga malformed", []byte{cGetAssertion, 0xbf}, ctap.StatusInvalidCBOR},
		{"ga tagged", []byte{cGetAssertion, 0xc0, 0x60}, ctap.StatusInvalidCBOR},
		{"next without ga", []byte{cGetNextAssertion}, ctap.StatusNotAllowed},
	}
	for _, tc := range raw {
		st, _ := e.rawCall(tc.req)
		if st != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, st, tc.want)
		}
	}

	cases := []struct {
		name string
		cmd  byte
		req  map[int]any
		want ctap.Status
	}{
		{"mc no clientDataHash", cMakeCredential, without(1), ctap.StatusMissingParameter},
		{"mc no rp", cMakeCredential, without(2), ctap.StatusMissingParameter},
		{"mc no user", cMakeCredential, without(3), ctap.StatusMissingParameter},
		{"mc no pubKeyCredParams", cMakeCredential, without(4), ctap.StatusMissingParameter},
		{"mc rp without id", cMakeCredential, with(2, map[string]any{"name": "x"}), ctap.StatusMissingParameter},
		{"mc user without id", cMakeCredential, with(3, map[string]any{"name": "x"}), ctap.StatusMissingParameter},
		{"mc clientDataHash as text", cMakeCredential, with(1, "hash"), ctap.StatusCBORUnexpectedType},
		{"mc rp as text", cMakeCredential, with(2, "example.org"), ctap.StatusCBORUnexpectedType},
		{"mc rp id as bytes", cMakeCredential, with(2, map[string]any{"id": []byte("example.org")}), ctap.StatusCBORUnexpectedType},
		{"mc user id as text", cMakeCredential, with(3, map[string]any{"id": "alice"}), ctap.StatusCBORUnexpectedType},
		{"mc user name as int", cMakeCredential, with(3, map[string]any{"id": []byte{1}, "name": 5}), ctap.StatusCBORUnexpectedType},
		{"mc params not array", cMakeCredential, with(4, map[string]any{"alg": -7}), ctap.StatusCBORUnexpectedType},
		{"mc param alg as text", cMakeCredential, with(4, []map[string]any{{"type": "public-key", "alg": "-7"}}), ctap.StatusCBORUnexpectedType},
		{"mc param without alg", cMakeCredential, with(4, []map[string]any{{"type": "public-key"}}), ctap.StatusMissingParameter},
		{"mc ed25519 only", cMakeCredential, with(4, []map[string]any{{"type": "public-key", "alg": -8}}), ctap.StatusUnsupportedAlgorithm},
		{"mc RS256 only", cMakeCredential, with(4, []map[string]any{{"type": "public-key", "alg": -257}}), ctap.StatusUnsupportedAlgorithm},
		{"mc ES256 of another type", cMakeCredential, with(4, []map[string]any{{"type": "other", "alg": -7}}), ctap.StatusUnsupportedAlgorithm},
		{"mc empty params", cMakeCredential, with(4, []any{}), ctap.StatusUnsupportedAlgorithm},
		{"mc options up=false", cMakeCredential, with(7, map[string]bool{"up": false}), ctap.StatusInvalidOption},
		{"mc options uv=true", cMakeCredential, with(7, map[string]bool{"uv": true}), ctap.StatusInvalidOption},
		{"mc option as int", cMakeCredential, with(7, map[string]any{"rk": 1}), ctap.StatusCBORUnexpectedType},
		{"mc options not map", cMakeCredential, with(7, []bool{true}), ctap.StatusCBORUnexpectedType},
		{"mc credProtect as text", cMakeCredential, with(6, map[string]any{"credProtect": "2"}), ctap.StatusCBORUnexpectedType},
		{"mc hmac-secret as int", cMakeCredential, with(6, map[string]any{"hmac-secret": 1}), ctap.StatusCBORUnexpectedType},
		{"mc excludeList entry without id", cMakeCredential, with(5, []map[string]any{{"type": "public-key"}}), ctap.StatusMissingParameter},
		{"mc excludeList id as text", cMakeCredential, with(5, []map[string]any{{"type": "public-key", "id": "x"}}), ctap.StatusCBORUnexpectedType},
		{"mc enterprise attestation", cMakeCredential, with(10, 1), ctap.StatusInvalidParameter},
		{"mc pinUvAuthParam without protocol", cMakeCredential, with(8, make([]byte, 32)), ctap.StatusMissingParameter},
		{"mc short clientDataHash", cMakeCredential, with(1, []byte{1, 2, 3}), ctap.StatusInvalidLength},
		{"mc long user id", cMakeCredential, with(3, map[string]any{"id": make([]byte, 65)}), ctap.StatusInvalidLength},
		{"ga no rpId", cGetAssertion, map[int]any{2: cdh("x")}, ctap.StatusMissingParameter},
		{"ga no clientDataHash", cGetAssertion, map[int]any{1: "example.org"}, ctap.StatusMissingParameter},
		{"ga rpId as bytes", cGetAssertion, gaWith(1, []byte("example.org")), ctap.StatusCBORUnexpectedType},
		{"ga allowList not array", cGetAssertion, gaWith(3, map[string]any{}), ctap.StatusCBORUnexpectedType},
		{"ga rk option", cGetAssertion, gaWith(5, map[string]bool{"rk": true}), ctap.StatusUnsupportedOption},
		{"ga uv option", cGetAssertion, gaWith(5, map[string]bool{"uv": true}), ctap.StatusInvalidOption},
		{"ga up as text", cGetAssertion, gaWith(5, map[string]any{"up": "no"}), ctap.StatusCBORUnexpectedType},
		{"ga protocol as text", cGetAssertion, gaWith(7, "2"), ctap.StatusCBORUnexpectedType},
		{"ga hmac-secret not map", cGetAssertion, gaWith(4, map[string]any{"hmac-secret": true}), ctap.StatusCBORUnexpectedType},
		{"ga hmac-secret missing salt", cGetAssertion, gaWith(4, map[string]any{"hmac-secret": map[int]any{1: map[int]any{}}}), ctap.StatusMissingParameter},
		{"ga no credentials", cGetAssertion, gaGood(), ctap.StatusNoCredentials},
		{"mc unsupported protocol", cMakeCredential, with(9, 3), ctap.StatusOK}, // protocol without param is ignored
	}
	for _, tc := range cases {
		st, _ := e.call(tc.cmd, tc.req)
		if st != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, st, tc.want)
		}
	}
	r := with(8, make([]byte, 32))
	r[9] = 3
	st, _ := e.call(cMakeCredential, r)
	wantStatus(t, "unsupported pinUvAuthProtocol", st, ctap.StatusInvalidParameter)
}

// TestOneCBORMode: every command decodes what the client sent in the
// same mode. An extra, unknown parameter (0x1F, ignored when well-formed)
// carrying what the mode refuses makes each command INVALID_CBOR; within
// the limits it is ignored.
func TestOneCBORMode(t *testing.T) {
	e := newEnv(t)
	nest := func(levels int) []byte { // an array nested levels deep
		return append(bytes.Repeat([]byte{0x81}, levels-1), 0x80)
	}
	wide := []byte{0xb9, 0x01, 0x01} // a map of 257 pairs
	for i := range 257 {
		wide = append(wide, 0x19, byte(i>>8), byte(i), 0xf6)
	}
	bad := map[string][]byte{
		"tag":              {0xc1, 0x01},
		"indefinite array": {0x9f, 0x01, 0xff},
		"indefinite map":   {0xbf, 0x01, 0x02, 0xff},
		"indefinite bytes": {0x5f, 0x41, 0x00, 0xff},
		"nesting of 9":     nest(8), // in the parameter map: 9 levels
		"257 map pairs":    wide,
	}
	fine := map[string][]byte{
		"nesting of 8":  nest(7),
		"256 map pairs": append([]byte{0xb9, 0x01, 0x00}, wide[3:3+256*4]...),
	}
	commands := map[string]struct {
		req  map[int]any
		want ctap.Status // with a harmless extra parameter
	}{
		"makeCredential": {mcRequest(mcOpts{}, cdh("x")), ctap.StatusOK},
		"getAssertion":   {map[int]any{1: "example.org", 2: cdh("x")}, ctap.StatusNoCredentials},
		"clientPIN":      {map[int]any{1: 2, 2: 1}, ctap.StatusOK},
		"credMgmt":       {map[int]any{1: 1}, ctap.StatusPUATRequired},
		"credMgmt 0x41":  {map[int]any{1: 1}, ctap.StatusPUATRequired},
	}
	cmdByte := map[string]byte{"makeCredential": cMakeCredential, "getAssertion": cGetAssertion,
		"clientPIN": cClientPIN, "credMgmt": 0x0A, "credMgmt 0x41": 0x41}
	// with appends the parameter 0x1F: extra to the request map (fewer
	// than 23 entries), bytes the test encoder would refuse included.
	with := func(cmd byte, req map[int]any, extra []byte) []byte {
		b := enc(t, req)
		b[0]++ // map header 0xa0+n
		return append(append(append([]byte{cmd}, b...), 0x18, 0x1F), extra...)
	}
	for name, c := range commands {
		for what, extra := range bad {
			st, _ := e.rawCall(with(cmdByte[name], c.req, extra))
			if st != ctap.StatusInvalidCBOR {
				t.Errorf("%s with %s: %v, want INVALID_CBOR", name, what, st)
			}
		}
		for what, extra := range fine {
			st, _ := e.rawCall(with(cmdByte[name], c.req, extra))
			if st != c.want {
				t.Errorf("%s with %s: %v, want %v", name, what, st, c.want)
			}
		}
	}
	// A whole request in indefinite length, and a tagged one.
	for name, b := range map[string]byte{"makeCredential": cMakeCredential, "getAssertion": cGetAssertion, "clientPIN": cClientPIN, "credMgmt": 0x0A} {
		if st, _ := e.rawCall([]byte{b, 0xbf, 0x02, 0x01, 0xff}); st != ctap.StatusInvalidCBOR {
			t.Errorf("%s as an indefinite-length map: %v, want INVALID_CBOR", name, st)
		}
		if st, _ := e.rawCall([]byte{b, 0xc1, 0xa1, 0x02, 0x01}); st != ctap.StatusInvalidCBOR {
			t.Errorf("%s tagged: %v, want INVALID_CBOR", name, st)
		}
	}
}

func TestExcludeList(t *testing.T) {
	e := newEnv(t)
	c := e.makeCredential(mcOpts{})
	n := e.prompt.count()
	st, _ := e.call(cMakeCredential, mcRequest(mcOpts{exclude: [][]byte{[]byte("junk"), c.id}}, cdh("x")))
	wantStatus(t, "excluded", st, ctap.StatusCredentialExcluded)
	if e.prompt.count() != n+1 {
		t.Error("no presence prompt before CREDENTIAL_EXCLUDED")
	}
	// The same ID for another RP does not exclude.
	e.makeCredential(mcOpts{rp: "other.example", exclude: [][]byte{c.id}})
	// A credProtect=3 credential is not revealed without UV.
	p := e.newPlatform(2)
	p.setPIN("4321")
	c3 := e.makeCredential(mcOpts{credProtect: 3, token: p.token("4321", 0x01, "example.org")})
	e.makeCredential(mcOpts{exclude: [][]byte{c3.id}})
	// Denial while excluded still answers CREDENTIAL_EXCLUDED.
	e.prompt.answer = func(context.Context, presence.Request) error { return presence.ErrDenied }
	st, _ = e.call(cMakeCredential, mcRequest(mcOpts{exclude: [][]byte{c.id}}, cdh("x")))
	wantStatus(t, "excluded, denied", st, ctap.StatusCredentialExcluded)
}

func TestPresenceOutcomes(t *testing.T) {
	for _, tc := range []struct {
		name   string
		answer func(context.Context, presence.Request) error
		want   ctap.Status
	}{
		{"denied", func(context.Context, presence.Request) error { return presence.ErrDenied }, ctap.StatusOperationDenied},
		{"timeout", func(context.Context, presence.Request) error { return presence.ErrTimeout }, ctap.StatusUserActionTimeout},
		{"unavailable", func(context.Context, presence.Request) error {
			return fmt.Errorf("%w: pinentry /usr/bin/pinentry-curses: no terminal", presence.ErrUnavailable)
		}, ctap.StatusOperationDenied},
		{"broken", func(context.Context, presence.Request) error { return errors.New("dbus exploded") }, ctap.StatusOther},
	} {
		t.Run(tc.name, func(t *testing.T) {
			e := newEnv(t)
			c := e.makeCredential(mcOpts{})
			e.prompt.answer = tc.answer
			st, _ := e.call(cMakeCredential, mcRequest(mcOpts{}, cdh("x")))
			wantStatus(t, "makeCredential", st, tc.want)
			st, _ = e.call(cGetAssertion, map[int]any{1: "example.org", 2: cdh("x"), 3: allowList(c.id)})
			wantStatus(t, "getAssertion", st, tc.want)
			st, _ = e.call(cSelection, nil)
			wantStatus(t, "selection", st, tc.want)
			if tc.want == ctap.StatusOther && !strings.Contains(e.logs.String(), "dbus exploded") {
				t.Error("internal error not logged")
			}
			// Why no prompt could be shown is in the log, not only that.
			if tc.name == "unavailable" && !strings.Contains(e.logs.String(), "pinentry-curses: no terminal") {
				t.Errorf("the cause of the missing prompt is not logged:\n%s", e.logs.String())
			}
		})
	}
}

func TestCancelThroughContext(t *testing.T) {
	e := newEnv(t)
	var statuses []ctap.KeepaliveStatus
	started := make(chan struct{})
	e.prompt.answer = func(ctx context.Context, _ presence.Request) error {
		close(started)
		<-ctx.Done()
		return ctx.Err()
	}
	ctx, cancel := context.WithCancel(ctap.WithKeepalive(context.Background(), func(s ctap.KeepaliveStatus) {
		statuses = append(statuses, s)
	}))
	defer cancel()
	go func() { <-started; cancel() }()
	st, _ := e.rawCallCtx(ctx, append([]byte{cMakeCredential}, enc(t, mcRequest(mcOpts{}, cdh("x")))...))
	wantStatus(t, "cancelled makeCredential", st, ctap.StatusKeepaliveCancel)
	if len(statuses) != 2 || statuses[0] != ctap.KeepaliveUPNeeded || statuses[1] != ctap.KeepaliveProcessing {
		t.Errorf("keepalive statuses %v", statuses)
	}
	if e.fake.Calls["CreateCredential"] != 0 {
		t.Error("credential created after cancel")
	}
}

func TestZeroLengthPinUvAuthParam(t *testing.T) {
	e := newEnv(t)
	req := mcRequest(mcOpts{}, cdh("x"))
	req[8] = []byte{}
	req[9] = 1
	st, _ := e.call(cMakeCredential, req)
	wantStatus(t, "no PIN", st, ctap.StatusPINNotSet)
	if e.prompt.count() != 1 {
		t.Error("no touch requested")
	}
	e.newPlatform(2).setPIN("1234")
	st, _ = e.call(cMakeCredential, req)
	wantStatus(t, "PIN set", st, ctap.StatusPINInvalid)
	st, _ = e.call(cGetAssertion, map[int]any{1: "x", 2: cdh("x"), 6: []byte{}, 7: 2})
	wantStatus(t, "getAssertion PIN set", st, ctap.StatusPINInvalid)
	e.prompt.answer = func(context.Context, presence.Request) error { return presence.ErrDenied }
	st, _ = e.call(cMakeCredential, req)
	wantStatus(t, "denied", st, ctap.StatusOperationDenied)
}

func TestPINProtectedMakeCredential(t *testing.T) {
	e := newEnv(t)
	p := e.newPlatform(2)
	p.setPIN("1234")

	// makeCredUvNotRqd: a non-discoverable credential needs no token...
	c := e.makeCredential(mcOpts{})
	if c.auth.flags&0x04 != 0 {
		t.Error("UV set without a token")
	}
	// ...a discoverable one does.
	st, _ := e.call(cMakeCredential, mcRequest(mcOpts{rk: true}, cdh("x")))
	wantStatus(t, "rk without token", st, ctap.StatusPUATRequired)

	tok := p.token("1234", 0x01, "example.org")
	c = e.makeCredential(mcOpts{rk: true, token: tok})
	if c.auth.flags&0x05 != 0x05 {
		t.Errorf("flags %#x, want UP|UV", c.auth.flags)
	}
	// The token is bound to example.org.
	tok = p.token("1234", 0x01, "example.org")
	st, _ = e.call(cMakeCredential, mcRequest(mcOpts{rp: "other.example", token: tok}, cdh("x")))
	if st == ctap.StatusOK {
		t.Error("token for example.org accepted for other.example")
	}
	// A token without the mc permission is refused.
	tok = p.token("1234", 0x02, "example.org")
	st, _ = e.call(cMakeCredential, mcRequest(mcOpts{token: tok}, cdh("x")))
	if st == ctap.StatusOK {
		t.Error("token without mc permission accepted")
	}
	// A wrong pinUvAuthParam.
	req := mcRequest(mcOpts{token: make([]byte, 32)}, cdh("x"))
	st, _ = e.call(cMakeCredential, req)
	wantStatus(t, "bad pinUvAuthParam", st, ctap.StatusPINAuthInvalid)
}

func TestCredProtectEnforcement(t *testing.T) {
	e := newEnv(t)
	p := e.newPlatform(2)
	p.setPIN("1234")
	mk := func(level int, user string) credential {
		return e.makeCredential(mcOpts{rk: true, credProtect: level, user: user,
			token: p.token("1234", 0x01, "example.org")})
	}
	c1, c2, c3 := mk(1, "one"), mk(2, "two"), mk(3, "three")
	pubs := map[string]*ecdsa.PublicKey{string(c1.id): c1.pub, string(c2.id): c2.pub, string(c3.id): c3.pub}
	ga := func(allow [][]byte, tok []byte) (ctap.Status, assertion) {
		h := cdh("ga")
		req := map[int]any{1: "example.org", 2: h}
		if allow != nil {
			req[3] = allowList(allow...)
		}
		if tok != nil {
			req[6] = ctaphidtest.Authenticate(2, tok, h)
			req[7] = 2
		}
		st, m := e.call(cGetAssertion, req)
		if st != ctap.StatusOK {
			return st, assertion{}
		}
		return st, verifyAssertion(t, m, h, pubs)
	}
	// Level 3 needs UV even with its ID.
	st, _ := ga([][]byte{c3.id}, nil)
	wantStatus(t, "level 3 without UV", st, ctap.StatusNoCredentials)
	st, as := ga([][]byte{c3.id}, p.token("1234", 0x02, "example.org"))
	wantStatus(t, "level 3 with UV", st, ctap.StatusOK)
	if as.auth.flags&0x04 == 0 {
		t.Error("UV flag clear with a token")
	}
	// Level 2 with its ID needs no UV.
	st, as = ga([][]byte{c2.id}, nil)
	wantStatus(t, "level 2 with ID", st, ctap.StatusOK)
	if !bytes.Equal(as.credID, c2.id) {
		t.Error("wrong credential")
	}
	// Discoverable without UV: only level 1.
	st, as = ga(nil, nil)
	wantStatus(t, "discoverable without UV", st, ctap.StatusOK)
	if !bytes.Equal(as.credID, c1.id) || as.count != 0 {
		t.Errorf("got credential for %v, count %d", as.user, as.count)
	}
	if len(as.user) != 1 || !bytes.Equal(as.user["id"].([]byte), []byte("uid-one")) {
		t.Errorf("user without UV: %v", as.user)
	}
	// Discoverable with UV: all three, newest first, with names.
	st, as = ga(nil, p.token("1234", 0x02, "example.org"))
	wantStatus(t, "discoverable with UV", st, ctap.StatusOK)
	if as.count != 3 || !bytes.Equal(as.credID, c3.id) || as.user["name"] != "three" || as.user["displayName"] != "User three" {
		t.Errorf("first: count %d user %v", as.count, as.user)
	}
	for _, want := range []credential{c2, c1} {
		h := cdh("ga")
		st, m := e.call(cGetNextAssertion, nil)
		wantStatus(t, "getNextAssertion", st, ctap.StatusOK)
		as := verifyAssertion(t, m, h, pubs)
		if !bytes.Equal(as.credID, want.id) || as.auth.flags != 0x05 || as.count != 0 {
			t.Errorf("next: flags %#x count %d user %v", as.auth.flags, as.count, as.user)
		}
	}
	st, _ = e.call(cGetNextAssertion, nil)
	wantStatus(t, "past the end", st, ctap.StatusNotAllowed)
}

// The user member of getAssertion (CTAP 2.1 §6.2.2, 0x04): a
// discoverable credential's user id is always returned, also when the
// allowList named it; name and displayName only with UV and more than one
// account returned; a non-discoverable credential has no user member.
func TestAssertionUserMember(t *testing.T) {
	e := newEnv(t)
	p := e.newPlatform(2)
	p.setPIN("1234")
	mk := func(rp, user string, rk bool) credential {
		e.clock.Advance(time.Second)
		return e.makeCredential(mcOpts{rp: rp, user: user, rk: rk, token: p.token("1234", 0x01, rp)})
	}
	one, two := mk("example.org", "one", true), mk("example.org", "two", true)
	plain := mk("example.org", "plain", false)
	solo := mk("solo.example", "solo", true)
	pubs := map[string]*ecdsa.PublicKey{string(one.id): one.pub, string(two.id): two.pub,
		string(plain.id): plain.pub, string(solo.id): solo.pub}
	ga := func(rp string, allow []byte, uv bool) assertion {
		t.Helper()
		h := cdh("ga " + rp)
		req := map[int]any{1: rp, 2: h}
		if allow != nil {
			req[3] = allowList(allow)
		}
		if uv {
			tok := p.token("1234", 0x02, rp)
			req[6] = ctaphidtest.Authenticate(2, tok, h)
			req[7] = 2
		}
		st, m := e.call(cGetAssertion, req)
		wantStatus(t, "getAssertion", st, ctap.StatusOK)
		return verifyAssertion(t, m, h, pubs)
	}
	idOnly := func(what string, as assertion, id string) {
		t.Helper()
		if got, _ := as.user["id"].([]byte); len(as.user) != 1 || string(got) != id {
			t.Errorf("%s: user %v, want only id %q", what, as.user, id)
		}
	}
	withNames := func(what string, as assertion, u string) {
		t.Helper()
		if got, _ := as.user["id"].([]byte); string(got) != "uid-"+u || as.user["name"] != u || as.user["displayName"] != "User "+u {
			t.Errorf("%s: user %v, want id, name and displayName of %q", what, as.user, u)
		}
	}

	idOnly("allowList, discoverable, no UV", ga("example.org", one.id, false), "uid-one")
	idOnly("allowList, discoverable, UV (one account)", ga("example.org", one.id, true), "uid-one")
	if as := ga("example.org", plain.id, true); as.user != nil {
		t.Errorf("allowList, non-discoverable: user %v, want none", as.user)
	}
	idOnly("discoverable, UV, one account", ga("solo.example", nil, true), "uid-solo")

	as := ga("example.org", nil, false)
	if as.count != 2 {
		t.Fatalf("numberOfCredentials %d, want 2", as.count)
	}
	idOnly("discoverable, no UV, two accounts", as, "uid-two")
	st, m := e.call(cGetNextAssertion, nil)
	wantStatus(t, "getNextAssertion", st, ctap.StatusOK)
	idOnly("next, no UV", verifyAssertion(t, m, cdh("ga example.org"), pubs), "uid-one")

	as = ga("example.org", nil, true)
	if as.count != 2 {
		t.Fatalf("numberOfCredentials %d, want 2", as.count)
	}
	withNames("discoverable, UV, two accounts", as, "two")
	st, m = e.call(cGetNextAssertion, nil)
	wantStatus(t, "getNextAssertion", st, ctap.StatusOK)
	withNames("next, UV", verifyAssertion(t, m, cdh("ga example.org"), pubs), "one")
}

func TestGetNextAssertionState(t *testing.T) {
	e := newEnv(t)
	for _, u := range []string{"a", "b", "c"} {
		e.clock.Advance(time.Second)
		e.makeCredential(mcOpts{rk: true, user: u})
	}
	start := func() {
		st, m := e.call(cGetAssertion, map[int]any{1: "example.org", 2: cdh("x")})
		wantStatus(t, "getAssertion", st, ctap.StatusOK)
		if n := field[int](t, m, 5); n != 3 {
			t.Fatalf("numberOfCredentials %d", n)
		}
	}
	start()
	e.call(cGetInfo, nil)
	st, _ := e.call(cGetNextAssertion, nil)
	wantStatus(t, "after another command", st, ctap.StatusNotAllowed)
	start()
	e.clock.Advance(31 * time.Second)
	st, _ = e.call(cGetNextAssertion, nil)
	wantStatus(t, "after 31 s", st, ctap.StatusNotAllowed)
	start()
	e.clock.Advance(29 * time.Second)
	st, _ = e.call(cGetNextAssertion, nil)
	wantStatus(t, "within 30 s", st, ctap.StatusOK)
	e.clock.Advance(29 * time.Second) // the timer restarts with each call
	st, _ = e.call(cGetNextAssertion, nil)
	wantStatus(t, "within 30 s of the previous one", st, ctap.StatusOK)
	st, _ = e.call(cGetNextAssertion, nil)
	wantStatus(t, "past the last one", st, ctap.StatusNotAllowed)
	// Replacing the credential of user "b" keeps three.
	e.makeCredential(mcOpts{rk: true, user: "b"})
	start()
}

// A getNextAssertion walk belongs to the channel that started it: a
// continuation from another channel is NOT_ALLOWED and ends the walk;
// the 30 s timer still applies to the owner.
func TestGetNextAssertionBelongsToChannel(t *testing.T) {
	e := newEnv(t)
	for _, u := range []string{"a", "b", "c"} {
		e.clock.Advance(time.Second)
		e.makeCredential(mcOpts{rk: true, user: u})
	}
	start := func() {
		t.Helper()
		e.CID = 7
		st, m := e.call(cGetAssertion, map[int]any{1: "example.org", 2: cdh("x")})
		wantStatus(t, "getAssertion", st, ctap.StatusOK)
		if n := field[int](t, m, 5); n != 3 {
			t.Fatalf("numberOfCredentials %d", n)
		}
	}
	start()
	e.CID = 8
	st, _ := e.call(cGetNextAssertion, nil)
	wantStatus(t, "getNextAssertion from another channel", st, ctap.StatusNotAllowed)
	e.CID = 7
	st, _ = e.call(cGetNextAssertion, nil)
	wantStatus(t, "owner after another channel asked", st, ctap.StatusNotAllowed)

	start()
	e.CID = 8
	e.call(cGetInfo, nil)
	e.CID = 7
	st, _ = e.call(cGetNextAssertion, nil)
	wantStatus(t, "owner after another channel's getInfo", st, ctap.StatusNotAllowed)

	start()
	e.clock.Advance(29 * time.Second)
	st, _ = e.call(cGetNextAssertion, nil)
	wantStatus(t, "owner within 30 s", st, ctap.StatusOK)
	e.clock.Advance(31 * time.Second)
	st, _ = e.call(cGetNextAssertion, nil)
	wantStatus(t, "owner after 31 s", st, ctap.StatusNotAllowed)
}

func TestResidentStoreFull(t *testing.T) {
	e := newEnv(t) // capacity 4
	for _, u := range []string{"a", "b", "c", "d"} {
		e.makeCredential(mcOpts{rk: true, user: u})
	}
	n := e.prompt.count()
	st, _ := e.call(cMakeCredential, mcRequest(mcOpts{rk: true, user: "e"}, cdh("x")))
	wantStatus(t, "fifth rk", st, ctap.StatusKeyStoreFull)
	if e.prompt.count() != n {
		t.Error("prompted although the store is full")
	}
	e.makeCredential(mcOpts{rk: true, user: "a"}) // overwrite is allowed
	e.makeCredential(mcOpts{user: "e"})           // non-resident is fine
}

func TestHMACSecret(t *testing.T) {
	for _, proto := range []uint64{1, 2} {
		t.Run(map[uint64]string{1: "protocol1", 2: "protocol2"}[proto], func(t *testing.T) {
			e := newEnv(t)
			c := e.makeCredential(mcOpts{hmacSecret: true})
			plain := e.makeCredential(mcOpts{user: "plain"})
			pubs := map[string]*ecdsa.PublicKey{string(c.id): c.pub, string(plain.id): plain.pub}
			cred, err := e.fake.OpenCredential(sha256.Sum256([]byte("example.org")), c.id)
			if err != nil {
				t.Fatal(err)
			}
			p := e.newPlatform(proto)
			salt1 := bytes.Repeat([]byte{1}, 32)
			salt2 := bytes.Repeat([]byte{2}, 32)
			get := func(id []byte, salts []byte, up bool) ([]byte, assertion) {
				t.Helper()
				saltEnc := p.Encrypt(salts)
				h := cdh("hs")
				ext := map[int]any{1: p.Key, 2: saltEnc, 3: ctaphidtest.Authenticate(proto, p.Shared, saltEnc)}
				if proto != 1 {
					ext[4] = proto
				}
				st, m := e.call(cGetAssertion, map[int]any{1: "example.org", 2: h, 3: allowList(id),
					4: map[string]any{"hmac-secret": ext}, 5: map[string]bool{"up": up}})
				wantStatus(t, "getAssertion hmac-secret", st, ctap.StatusOK)
				as := verifyAssertion(t, m, h, pubs)
				if as.auth.ext == nil {
					return nil, as
				}
				out, _ := as.auth.ext["hmac-secret"].([]byte)
				if len(as.auth.ext) != 1 || out == nil {
					t.Fatalf("extensions %v", as.auth.ext)
				}
				return p.decrypt(out), as
			}
			cr, _ := e.fake.CredRandom(cred, false)
			want := func(salt []byte) []byte {
				m := hmac.New(sha256.New, cr)
				m.Write(salt)
				return m.Sum(nil)
			}
			out, as := get(c.id, salt1, true)
			if !bytes.Equal(out, want(salt1)) || as.auth.flags != 0x81 {
				t.Errorf("one salt: output mismatch (flags %#x)", as.auth.flags)
			}
			out, _ = get(c.id, append(append([]byte(nil), salt1...), salt2...), true)
			if !bytes.Equal(out, append(want(salt1), want(salt2)...)) {
				t.Error("two salts: output mismatch")
			}
			// A credential made without hmac-secret gets no output.
			if out, as := get(plain.id, salt1, true); out != nil || as.auth.flags&0x80 != 0 {
				t.Error("hmac-secret output for a credential without it")
			}
			// hmac-secret needs user presence (CTAP 2.1 §12.5): up=false
			// must not yield the secret silently.
			saltEnc := p.Encrypt(salt1)
			ext := map[int]any{1: p.Key, 2: saltEnc, 3: ctaphidtest.Authenticate(proto, p.Shared, saltEnc), 4: proto}
			st, _ := e.call(cGetAssertion, map[int]any{1: "example.org", 2: cdh("x"), 3: allowList(c.id),
				4: map[string]any{"hmac-secret": ext}, 5: map[string]bool{"up": false}})
			wantStatus(t, "hmac-secret with up=false", st, ctap.StatusUnsupportedOption)
			// Bad saltAuth.
			saltEnc = p.Encrypt(salt1)
			bad := ctaphidtest.Authenticate(proto, p.Shared, saltEnc)
			bad[0] ^= 1
			ext = map[int]any{1: p.Key, 2: saltEnc, 3: bad, 4: proto}
			st, _ = e.call(cGetAssertion, map[int]any{1: "example.org", 2: cdh("x"), 3: allowList(c.id),
				4: map[string]any{"hmac-secret": ext}})
			wantStatus(t, "bad saltAuth", st, ctap.StatusPINAuthInvalid)
			// Wrong salt length.
			saltEnc = p.Encrypt(make([]byte, 48))
			ext = map[int]any{1: p.Key, 2: saltEnc, 3: ctaphidtest.Authenticate(proto, p.Shared, saltEnc), 4: proto}
			st, _ = e.call(cGetAssertion, map[int]any{1: "example.org", 2: cdh("x"), 3: allowList(c.id),
				4: map[string]any{"hmac-secret": ext}})
			wantStatus(t, "48-byte salt", st, ctap.StatusInvalidLength)
			// An off-curve key-agreement point is an error, not a panic.
			k := p.Key
			k.Y = append([]byte(nil), k.Y...)
			k.Y[31] ^= 1
			ext = map[int]any{1: k, 2: saltEnc, 3: ctaphidtest.Authenticate(proto, p.Shared, saltEnc), 4: proto}
			st, _ = e.call(cGetAssertion, map[int]any{1: "example.org", 2: cdh("x"), 3: allowList(c.id),
				4: map[string]any{"hmac-secret": ext}})
			if st == ctap.StatusOK || st == ctap.StatusOther {
				t.Errorf("off-curve point: %v", st)
			}
			// Unsupported protocol.
			ext[4] = 9
			st, _ = e.call(cGetAssertion, map[int]any{1: "example.org", 2: cdh("x"), 3: allowList(c.id),
				4: map[string]any{"hmac-secret": ext}})
			wantStatus(t, "protocol 9", st, ctap.StatusInvalidParameter)
		})
	}
}

func TestHMACSecretDependsOnUV(t *testing.T) {
	e := newEnv(t)
	p := e.newPlatform(2)
	p.setPIN("1234")
	c := e.makeCredential(mcOpts{hmacSecret: true})
	pubs := map[string]*ecdsa.PublicKey{string(c.id): c.pub}
	get := func(tok []byte) []byte {
		p := e.newPlatform(2)
		saltEnc := p.Encrypt(bytes.Repeat([]byte{7}, 32))
		h := cdh("hs")
		req := map[int]any{1: "example.org", 2: h, 3: allowList(c.id), 4: map[string]any{"hmac-secret": map[int]any{
			1: p.Key, 2: saltEnc, 3: ctaphidtest.Authenticate(2, p.Shared, saltEnc), 4: 2}}}
		if tok != nil {
			req[6] = ctaphidtest.Authenticate(2, tok, h)
			req[7] = 2
		}
		st, m := e.call(cGetAssertion, req)
		wantStatus(t, "getAssertion", st, ctap.StatusOK)
		as := verifyAssertion(t, m, h, pubs)
		return p.decrypt(as.auth.ext["hmac-secret"].([]byte))
	}
	noUV1, noUV2 := get(nil), get(nil)
	withUV := get(p.token("1234", 0x02, "example.org"))
	if !bytes.Equal(noUV1, noUV2) {
		t.Error("hmac-secret output not stable")
	}
	if bytes.Equal(noUV1, withUV) {
		t.Error("hmac-secret output does not depend on UV")
	}
}

func TestReset(t *testing.T) {
	e := newEnv(t)
	c := e.makeCredential(mcOpts{rk: true})
	e.newPlatform(2).setPIN("1234")

	e.prompt.answer = func(context.Context, presence.Request) error { return presence.ErrDenied }
	st, _ := e.call(cReset, nil)
	wantStatus(t, "denied reset", st, ctap.StatusOperationDenied)
	if !e.store.PINIsSet() {
		t.Fatal("denied reset cleared the PIN")
	}
	e.prompt.answer = nil
	e.clock.Advance(5 * time.Second)
	st, _ = e.call(cReset, nil)
	wantStatus(t, "reset", st, ctap.StatusOK)
	if e.prompt.last().Op != presence.OpReset {
		t.Errorf("prompt %v", e.prompt.last())
	}
	if e.store.PINIsSet() {
		t.Error("PIN survives reset")
	}
	st, _ = e.call(cGetAssertion, map[int]any{1: "example.org", 2: cdh("x"), 3: allowList(c.id)})
	wantStatus(t, "old credential", st, ctap.StatusNoCredentials)

	e.clock.Advance(6 * time.Second)
	n := e.prompt.count()
	st, _ = e.call(cReset, nil)
	wantStatus(t, "reset after 11 s", st, ctap.StatusNotAllowed)
	if e.prompt.count() != n {
		t.Error("prompted for a reset that is not allowed")
	}
}

func TestSelection(t *testing.T) {
	e := newEnv(t)
	st, m := e.call(cSelection, nil)
	wantStatus(t, "selection", st, ctap.StatusOK)
	if m != nil || e.prompt.last().Op != presence.OpSelect {
		t.Errorf("response %v prompt %v", m, e.prompt.last())
	}
}

func TestInternalErrors(t *testing.T) {
	for _, method := range []string{"Sign", "CreateCredential", "NextCounter", "PutResident"} {
		e := newEnv(t)
		c := e.makeCredential(mcOpts{})
		e.fake.Fail[method] = true
		st, _ := e.call(cMakeCredential, mcRequest(mcOpts{rk: true}, cdh("x")))
		wantStatus(t, method+": makeCredential", st, ctap.StatusOther)
		if method == "Sign" || method == "NextCounter" {
			st, _ = e.call(cGetAssertion, map[int]any{1: "example.org", 2: cdh("x"), 3: allowList(c.id)})
			wantStatus(t, method+": getAssertion", st, ctap.StatusOther)
		}
		if !strings.Contains(e.logs.String(), ctap2test.ErrInjected.Error()) {
			t.Errorf("%s: cause not logged", method)
		}
	}
}

// TestApprovalNotReusedForAnotherChallenge: behind the daemon's prompt
// coalescer, a "yes" for one getAssertion must not approve a different
// getAssertion for the same RP (every SSH host is RP "ssh:"); only the
// same request retried (same clientDataHash) may reuse it.
func TestApprovalNotReusedForAnotherChallenge(t *testing.T) {
	rec := &prompter{}
	e := newEnv(t)
	a, err := ctap2.New(ctap2.Config{Store: e.fake, Presence: presence.NewCoalescer(rec, time.Minute, nil), Now: e.clock.Now})
	if err != nil {
		t.Fatal(err)
	}
	e.H = a
	c := e.makeCredential(mcOpts{})
	pubs := map[string]*ecdsa.PublicKey{string(c.id): c.pub}
	before := rec.count()
	for _, h := range [][]byte{cdh("login to host A"), cdh("login to host B")} {
		st, m := e.call(cGetAssertion, map[int]any{1: "example.org", 2: h, 3: allowList(c.id)})
		wantStatus(t, "getAssertion", st, ctap.StatusOK)
		verifyAssertion(t, m, h, pubs)
	}
	if n := rec.count() - before; n != 2 {
		t.Fatalf("%d prompts for two assertions over different challenges, want 2", n)
	}
	if got := rec.last().Challenge; !bytes.Equal(got, cdh("login to host B")) {
		t.Errorf("prompt carries challenge %x, want the clientDataHash", got)
	}
}

// A makeCredential that would replace a resident credential but fails
// before answering (here: the attestation signature) must leave the old
// credential in place.
func TestFailedReplacementKeepsResident(t *testing.T) {
	e := newEnv(t)
	old := e.makeCredential(mcOpts{rk: true, user: "a"})
	e.fake.Fail["Sign"] = true
	st, _ := e.call(cMakeCredential, mcRequest(mcOpts{rk: true, user: "a"}, cdh("again")))
	delete(e.fake.Fail, "Sign")
	wantStatus(t, "replacement whose signature fails", st, ctap.StatusOther)
	rs, err := e.fake.Residents(sha256.Sum256([]byte("example.org")))
	if err != nil {
		t.Fatal(err)
	}
	if len(rs) != 1 || !bytes.Equal(rs[0].CredentialID, old.id) {
		t.Fatalf("residents after a failed replacement: %d, want the old credential only", len(rs))
	}
}
