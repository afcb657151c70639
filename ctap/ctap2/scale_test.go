package ctap2_test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/tpmstore"
)

const cCredMgmt = 0x0A

// scaleEnv is the authenticator on the real TPM store holding
// tpmstore.DefaultMaxResidents (10,000) resident credentials over 1,000
// RPs: big.example has 9,001 of them, each other RP one.
type scaleEnv struct {
	*env
	store *tpmstore.Store
	// big.example, oldest first: credential IDs, which have real TPM
	// keys (the rest are records only, which discovery never reaches
	// without UV and enumeration does not need to open), and levels.
	bigIDs   [][]byte
	bigLevel []uint8
	pubs     map[string]*ecdsa.PublicKey
	others   []string // the other RPs' IDs
}

const (
	bigRP     = "big.example"
	bigCount  = 9001
	realNoUV  = 100 // credProtect-1 credentials with real keys, spread over big.example
	realNewUV = 5   // credProtect-2 credentials with real keys, the newest of big.example
)

// newScaleEnv seeds the store through its own API: PutResidents for every
// credential, CreateCredential (the TPM) for the 105 the test signs with.
func newScaleEnv(t *testing.T) *scaleEnv {
	t.Helper()
	store, _ := simulatorStore(t, "10,000 resident credentials:")
	if store.MaxResidents() != 10000 {
		t.Fatalf("default capacity %d", store.MaxResidents())
	}
	se := &scaleEnv{env: newEnvWithStore(t, store), store: store, pubs: map[string]*ecdsa.PublicKey{}}
	var keys []*ecdsa.PublicKey
	for range 4 {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		keys = append(keys, &k.PublicKey)
	}
	var seed []tpmstore.Resident
	put := func(rp string, id []byte, user string, pub *ecdsa.PublicKey, level uint8) {
		seed = append(seed, tpmstore.Resident{CredentialID: id, RPID: rp, RPIDHash: sha256.Sum256([]byte(rp)),
			RPName: "Name of " + rp, User: tpmstore.User{ID: []byte(user), Name: user, DisplayName: "User " + user},
			PublicKey: pub, CredProtect: level})
	}
	fakeID := func() []byte {
		id := make([]byte, 226)
		rand.Read(id)
		return id
	}
	for i := range 999 {
		rp := fmt.Sprintf("rp%03d.example", i)
		se.others = append(se.others, rp)
		put(rp, fakeID(), "u", keys[i%4], uint8(1+i%3))
	}
	bigHash := sha256.Sum256([]byte(bigRP))
	realAt := map[int]uint8{}
	for j := range realNoUV {
		realAt[(bigCount-realNewUV)*j/realNoUV+37] = tpmstore.CredProtectUVOptional
	}
	for j := range realNewUV {
		realAt[bigCount-realNewUV+j] = tpmstore.CredProtectUVOptionalWithCredIDs
	}
	for i := range bigCount {
		user := fmt.Sprintf("user%04d", i)
		if level, ok := realAt[i]; ok {
			c, err := store.CreateCredential(bigHash, tpmstore.CredentialOptions{CredProtect: level, Resident: true})
			if err != nil {
				t.Fatal(err)
			}
			put(bigRP, c.ID, user, c.PublicKey, level)
			se.bigIDs, se.bigLevel = append(se.bigIDs, c.ID), append(se.bigLevel, level)
			se.pubs[string(c.ID)] = c.PublicKey
			continue
		}
		level := uint8(2 + i%2) // never discoverable without UV
		id := fakeID()
		put(bigRP, id, user, keys[i%4], level)
		se.bigIDs, se.bigLevel = append(se.bigIDs, id), append(se.bigLevel, level)
	}
	// One transaction (PutResidents) instead of 10,000 fsyncs.
	if err := store.PutResidents(seed); err != nil {
		t.Fatal(err)
	}
	if n, _ := store.ResidentCount(); n != 10000 {
		t.Fatalf("seeded %d", n)
	}
	return se
}

// newestFirst returns big.example's IDs newest first, optionally only
// credProtect 1, leaving out deleted ones.
func (se *scaleEnv) newestFirst(onlyNoUV bool, deleted map[string]bool) [][]byte {
	var out [][]byte
	for i := len(se.bigIDs) - 1; i >= 0; i-- {
		if (onlyNoUV && se.bigLevel[i] != 1) || deleted[string(se.bigIDs[i])] {
			continue
		}
		out = append(out, se.bigIDs[i])
	}
	return out
}

// discover runs getAssertion without an allowList and getNextAssertion
// until NOT_ALLOWED (at most limit answers), checking each signature and
// that numberOfCredentials comes with the first answer only.
func (se *scaleEnv) discover(extra map[int]any, limit int) (ids [][]byte, count int) {
	t := se.t
	t.Helper()
	h := cdh("discover")
	req := map[int]any{1: bigRP, 2: h, 5: map[string]bool{"up": false}}
	for k, v := range extra {
		req[k] = v
	}
	st, m := se.call(cGetAssertion, req)
	if st == ctap.StatusNoCredentials {
		return nil, 0
	}
	wantStatus(t, "getAssertion", st, ctap.StatusOK)
	as := verifyAssertion(t, m, h, se.pubs)
	ids, count = append(ids, as.credID), as.count
	for len(ids) < limit {
		st, m := se.call(cGetNextAssertion, nil)
		if st == ctap.StatusNotAllowed {
			break
		}
		wantStatus(t, "getNextAssertion", st, ctap.StatusOK)
		as := verifyAssertion(t, m, h, se.pubs)
		if as.count != 0 {
			t.Fatalf("numberOfCredentials in answer %d", len(ids)+1)
		}
		ids = append(ids, as.credID)
	}
	return ids, count
}

func sameIDs(t *testing.T, what string, got, want [][]byte) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("%s: %d credentials, want %d", what, len(got), len(want))
	}
	for i := range got {
		if !bytes.Equal(got[i], want[i]) {
			t.Fatalf("%s: credential %d of %d is not the expected one (dropped or misordered)", what, i, len(want))
		}
	}
}

// TestDiscoveryAtScale: with 10,000 resident credentials (9,001 for one
// RP, 100 of them usable without UV), getAssertion's numberOfCredentials,
// credProtect filtering and newest-first order, getNextAssertion's 30 s
// window and capacity are right.
func TestDiscoveryAtScale(t *testing.T) {
	se := newScaleEnv(t)

	// Without UV only the 100 credProtect-1 credentials, newest first,
	// each once, then NOT_ALLOWED.
	ids, n := se.discover(nil, 1000)
	if n != realNoUV {
		t.Fatalf("numberOfCredentials %d without UV, want %d", n, realNoUV)
	}
	sameIDs(t, "discovery without UV", ids, se.newestFirst(true, nil))

	// The 30 s window, restarted by each getNextAssertion.
	st, _ := se.call(cGetAssertion, map[int]any{1: bigRP, 2: cdh("w"), 5: map[string]bool{"up": false}})
	wantStatus(t, "getAssertion", st, ctap.StatusOK)
	for range 3 {
		se.clock.Advance(29 * time.Second)
		st, _ = se.call(cGetNextAssertion, nil)
		wantStatus(t, "getNextAssertion after 29 s", st, ctap.StatusOK)
	}
	se.clock.Advance(30*time.Second + time.Millisecond)
	st, _ = se.call(cGetNextAssertion, nil)
	wantStatus(t, "getNextAssertion after 30 s", st, ctap.StatusNotAllowed)
	st, _ = se.call(cGetNextAssertion, nil)
	wantStatus(t, "getNextAssertion after the window closed", st, ctap.StatusNotAllowed)

	// The store is full: a new discoverable credential is refused before
	// any prompt, replacing one of the same user is not.
	st, m := se.call(cGetInfo, nil)
	wantStatus(t, "getInfo", st, ctap.StatusOK)
	if r := field[int](t, m, 0x14); r != 0 {
		t.Fatalf("remainingDiscoverableCredentials %d at 10,000 of 10,000", r)
	}
	prompts := se.prompt.count()
	st, _ = se.call(cMakeCredential, mcRequest(mcOpts{rp: bigRP, user: "newcomer", rk: true}, cdh("full")))
	wantStatus(t, "makeCredential rk, store full", st, ctap.StatusKeyStoreFull)
	if se.prompt.count() != prompts {
		t.Fatal("the user was asked to touch for a credential that cannot be stored")
	}
	req := mcRequest(mcOpts{rp: bigRP, rk: true}, cdh("replace"))
	req[3] = map[string]any{"id": []byte("user9000"), "name": "user9000"} // the newest credential's user
	st, m = se.call(cMakeCredential, req)
	wantStatus(t, "makeCredential rk replacing a user's credential, store full", st, ctap.StatusOK)
	ad := parseAuthData(t, field[[]byte](t, m, 2))
	if n, _ := se.store.ResidentCount(); n != 10000 {
		t.Fatalf("%d stored after a replacement", n)
	}
	old := se.bigIDs[bigCount-1]
	se.bigIDs[bigCount-1], se.bigLevel[bigCount-1] = ad.credID, tpmstore.CredProtectUVOptional
	se.pubs[string(ad.credID)] = ad.pub
	if _, err := se.store.OpenCredential(sha256.Sum256([]byte(bigRP)), old); err == nil {
		t.Fatal("the replaced credential still opens")
	}

	// With UV every credential counts; the newest five come first. (The
	// walk stops before the records without keys.)
	p := se.newPlatform(2)
	p.setPIN("4321")
	tok := p.token("4321", 0x02, bigRP)
	h := cdh("discover")
	ids, n = se.discover(map[int]any{6: ctaphidtest.Authenticate(2, tok, h), 7: 2}, realNewUV)
	if n != bigCount {
		t.Fatalf("numberOfCredentials %d with UV, want %d", n, bigCount)
	}
	sameIDs(t, "discovery with UV", ids, se.newestFirst(false, nil)[:realNewUV])
}

// cm sends an authenticated credentialManagement subcommand.
func (se *scaleEnv) cm(tok []byte, sub int, params map[int]any) (ctap.Status, map[int]cbor.RawMessage) {
	se.t.Helper()
	req := map[int]any{1: sub, 3: 2}
	msg := []byte{byte(sub)}
	if params != nil {
		raw := enc(se.t, params)
		req[2] = cbor.RawMessage(raw)
		msg = append(msg, raw...)
	}
	req[4] = ctaphidtest.Authenticate(2, tok, msg)
	return se.call(cCredMgmt, req)
}

// enumerate walks enumerateCredentials for big.example to the end (or
// stop answers) and returns the IDs and the announced total.
func (se *scaleEnv) enumerate(tok []byte, stop int) (ids [][]byte, total int) {
	t := se.t
	t.Helper()
	h := sha256.Sum256([]byte(bigRP))
	st, m := se.cm(tok, 4, map[int]any{1: h[:]})
	wantStatus(t, "enumerateCredentialsBegin", st, ctap.StatusOK)
	total = field[int](t, m, 9)
	next := func(m map[int]cbor.RawMessage) {
		var d map[string]any
		if err := strictDec.Unmarshal(m[7], &d); err != nil {
			t.Fatal(err)
		}
		id, _ := d["id"].([]byte)
		ids = append(ids, id)
	}
	next(m)
	for len(ids) < total && (stop <= 0 || len(ids) < stop) {
		st, m := se.call(cCredMgmt, map[int]any{1: 5})
		wantStatus(t, fmt.Sprintf("enumerateCredentialsGetNextCredential %d", len(ids)+1), st, ctap.StatusOK)
		if _, ok := m[9]; ok {
			t.Fatal("totalCredentials in a GetNext answer")
		}
		next(m)
	}
	if stop <= 0 {
		st, _ := se.call(cCredMgmt, map[int]any{1: 5})
		wantStatus(t, "enumerateCredentialsGetNextCredential past the end", st, ctap.StatusNotAllowed)
	}
	return ids, total
}

// TestCredMgmtAtScale: metadata, enumerateRPs and enumerateCredentials
// over 10,000 credentials, then again after deletions, including one in
// the middle of an enumeration, and discovery's count after them.
func TestCredMgmtAtScale(t *testing.T) {
	se := newScaleEnv(t)
	p := se.newPlatform(2)
	p.setPIN("4321")
	tok := p.token("4321", 0x04, "")

	st, m := se.cm(tok, 1, nil)
	wantStatus(t, "getCredsMetadata", st, ctap.StatusOK)
	if e, r := field[int](t, m, 1), field[int](t, m, 2); e != 10000 || r != 0 {
		t.Fatalf("metadata: %d existing, %d remaining", e, r)
	}

	rps := func() []string {
		st, m := se.cm(tok, 2, nil)
		wantStatus(t, "enumerateRPsBegin", st, ctap.StatusOK)
		total := field[int](t, m, 5)
		var got []string
		add := func(m map[int]cbor.RawMessage) {
			var rp map[string]any
			if err := strictDec.Unmarshal(m[3], &rp); err != nil {
				t.Fatal(err)
			}
			id, _ := rp["id"].(string)
			if h := sha256.Sum256([]byte(id)); !bytes.Equal(field[[]byte](t, m, 4), h[:]) {
				t.Fatalf("rpIDHash of %s", id)
			}
			got = append(got, id)
		}
		add(m)
		for len(got) < total {
			st, m := se.call(cCredMgmt, map[int]any{1: 3})
			wantStatus(t, "enumerateRPsGetNextRP", st, ctap.StatusOK)
			add(m)
		}
		st, _ = se.call(cCredMgmt, map[int]any{1: 3})
		wantStatus(t, "enumerateRPsGetNextRP past the end", st, ctap.StatusNotAllowed)
		return got
	}
	want := slices.Sorted(slices.Values(append([]string{bigRP}, se.others...)))
	if got := rps(); !slices.Equal(got, want) {
		t.Fatalf("enumerateRPs: %d RPs, want %d (or order differs)", len(got), len(want))
	}

	ids, total := se.enumerate(tok, 0)
	if total != bigCount {
		t.Fatalf("totalCredentials %d", total)
	}
	sameIDs(t, "enumerateCredentials", ids, se.newestFirst(false, nil))

	// Delete every 50th credential of big.example, the three newest
	// usable without UV, and the only credential of ten other RPs.
	deleted := map[string]bool{}
	del := func(id []byte) {
		t.Helper()
		st, _ := se.cm(tok, 6, map[int]any{2: map[string]any{"type": "public-key", "id": id}})
		wantStatus(t, "deleteCredential", st, ctap.StatusOK)
		deleted[string(id)] = true
	}
	for i := 0; i < bigCount; i += 50 {
		del(se.bigIDs[i])
	}
	for _, id := range se.newestFirst(true, deleted)[:3] {
		del(id)
	}
	for i := range 10 {
		h := sha256.Sum256([]byte(se.others[i*97]))
		rs, _, err := se.store.ListResidents(h, tpmstore.AllResidents, nil, 0)
		if err != nil || len(rs) != 1 {
			t.Fatal(err)
		}
		del(rs[0].CredentialID)
		want = slices.DeleteFunc(want, func(s string) bool { return s == se.others[i*97] })
	}
	if got := rps(); !slices.Equal(got, want) {
		t.Fatalf("enumerateRPs after deletions: %d RPs, want %d (or order differs)", len(got), len(want))
	}
	st, m = se.cm(tok, 1, nil)
	wantStatus(t, "getCredsMetadata", st, ctap.StatusOK)
	if e := field[int](t, m, 1); e != 10000-len(deleted) {
		t.Fatalf("metadata after %d deletions: %d existing", len(deleted), e)
	}

	// A deletion in the middle of an enumeration ends it (any other
	// subcommand does, §6.8); the next enumeration has the new total
	// and the remaining credentials in order.
	ids, _ = se.enumerate(tok, 20)
	del(ids[25%len(ids)])
	del(se.newestFirst(false, deleted)[100])
	st, _ = se.call(cCredMgmt, map[int]any{1: 5})
	wantStatus(t, "enumerateCredentialsGetNextCredential after a deletion", st, ctap.StatusNotAllowed)
	ids, total = se.enumerate(tok, 0)
	remaining := se.newestFirst(false, deleted)
	if total != len(remaining) {
		t.Fatalf("totalCredentials %d after deletions, want %d", total, len(remaining))
	}
	sameIDs(t, "enumerateCredentials after deletions", ids, remaining)

	// Discovery without UV counts and returns what is left.
	ids, n := se.discover(nil, 1000)
	left := se.newestFirst(true, deleted)
	if n != len(left) || len(left) >= realNoUV {
		t.Fatalf("numberOfCredentials %d after deletions, want %d (< %d)", n, len(left), realNoUV)
	}
	sameIDs(t, "discovery after deletions", ids, left)
}
