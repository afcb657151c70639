package ctap2

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2/ctap2test"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2/pinuv"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/tpmstore"
)

const cmTestPIN = "4321"

type cmTestEnv struct {
	*pinTestEnv
	p   *pinTestPlatform
	tok []byte
	cmd byte
	// residents by credential ID (as string), for checking answers
	byID map[string]tpmstore.Resident
}

// newCMTestEnv sets a PIN and stores residents: a.example has two
// credentials (one with a largeBlobKey), b.example one.
func newCMTestEnv(t *testing.T, proto uint64, cmd byte) *cmTestEnv {
	t.Helper()
	e := &cmTestEnv{pinTestEnv: newPINTestEnv(t), cmd: cmd, byID: map[string]tpmstore.Resident{}}
	e.p = e.platform(proto)
	wantStatus(t, "setPIN", e.p.setPIN([]byte(cmTestPIN)), ctap.StatusOK)
	add := func(rp, rpName string, user byte, cp uint8, lbk []byte) {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		id := make([]byte, 70)
		rand.Read(id)
		r := tpmstore.Resident{
			CredentialID: id, RPID: rp, RPIDHash: sha256.Sum256([]byte(rp)), RPName: rpName,
			User:      tpmstore.User{ID: []byte{user, user}, Name: "user" + string('0'+user), DisplayName: "User"},
			PublicKey: &k.PublicKey, CredProtect: cp, LargeBlobKey: lbk, Created: time.Unix(int64(user), 0),
		}
		if err := e.store.PutResident(r); err != nil {
			t.Fatal(err)
		}
		e.byID[string(id)] = r
	}
	add("a.example", "A Corp", 1, tpmstore.CredProtectUVOptional, nil)
	add("b.example", "", 2, tpmstore.CredProtectUVRequired, nil)
	add("a.example", "A Corp", 3, tpmstore.CredProtectUVOptionalWithCredIDs, bytes.Repeat([]byte{7}, 32))
	e.newToken(pinuv.PermCredentialManagement, "")
	return e
}

func (e *cmTestEnv) newToken(perms pinuv.Permission, rpID string) {
	e.t.Helper()
	tok, st := e.p.token(cmTestPIN, perms, rpID)
	wantStatus(e.t, "token", st, ctap.StatusOK)
	e.tok = tok
}

// cm sends an authenticated subcommand (params may be nil).
func (e *cmTestEnv) cm(sub int, params map[int]any) (ctap.Status, map[int]cbor.RawMessage) {
	e.t.Helper()
	req := map[int]any{1: sub, 3: e.p.Proto}
	msg := []byte{byte(sub)}
	if params != nil {
		raw, err := ctap2test.Enc.Marshal(params)
		if err != nil {
			e.t.Fatal(err)
		}
		req[2] = cbor.RawMessage(raw)
		msg = append(msg, raw...)
	}
	req[4] = e.p.mac(e.tok, msg)
	return e.call(e.cmd, req)
}

// next sends an unauthenticated GetNext subcommand.
func (e *cmTestEnv) next(sub int) (ctap.Status, map[int]cbor.RawMessage) {
	e.t.Helper()
	return e.call(e.cmd, map[int]any{1: sub})
}

type cmTestRP struct {
	ID   string `cbor:"id"`
	Name string `cbor:"name"`
}

func TestCredMgmtMetadataAndRPs(t *testing.T) {
	for _, cmd := range []byte{cmdCredentialManagement, cmdCredentialMgmtPreview} {
		for _, proto := range []uint64{1, 2} {
			e := newCMTestEnv(t, proto, cmd)
			st, m := e.cm(cmGetCredsMetadata, nil)
			wantStatus(t, "getCredsMetadata", st, ctap.StatusOK)
			if n, r := ctap2test.Field[int](t, m, 1), ctap2test.Field[int](t, m, 2); n != 3 || r != 22 {
				t.Fatalf("metadata = %d existing, %d remaining", n, r)
			}

			st, m = e.cm(cmEnumerateRPsBegin, nil)
			wantStatus(t, "enumerateRPsBegin", st, ctap.StatusOK)
			if total := ctap2test.Field[int](t, m, 5); total != 2 {
				t.Fatalf("totalRPs = %d", total)
			}
			seen := map[string]string{}
			check := func(m map[int]cbor.RawMessage) {
				rp := ctap2test.Field[cmTestRP](t, m, 3)
				h := ctap2test.Field[[]byte](t, m, 4)
				if want := sha256.Sum256([]byte(rp.ID)); !bytes.Equal(h, want[:]) {
					t.Fatalf("rpIDHash of %q wrong", rp.ID)
				}
				seen[rp.ID] = rp.Name
			}
			check(m)
			st, m = e.next(cmEnumerateRPsGetNextRP)
			wantStatus(t, "enumerateRPsGetNextRP", st, ctap.StatusOK)
			if _, ok := m[5]; ok {
				t.Fatal("totalRPs repeated in GetNextRP")
			}
			check(m)
			if len(seen) != 2 || seen["a.example"] != "A Corp" || seen["b.example"] != "" {
				t.Fatalf("RPs seen: %v", seen)
			}
			st, _ = e.next(cmEnumerateRPsGetNextRP)
			wantStatus(t, "GetNextRP past the end", st, ctap.StatusNotAllowed)
		}
	}
}

func TestCredMgmtEnumerateCredentials(t *testing.T) {
	for _, cmd := range []byte{cmdCredentialManagement, cmdCredentialMgmtPreview} {
		e := newCMTestEnv(t, 2, cmd)
		ha := sha256.Sum256([]byte("a.example"))
		st, m := e.cm(cmEnumerateCredentialsBegin, map[int]any{1: ha[:]})
		wantStatus(t, "enumerateCredentialsBegin", st, ctap.StatusOK)
		if total := ctap2test.Field[int](t, m, 9); total != 2 {
			t.Fatalf("totalCredentials = %d", total)
		}
		checkCred := func(m map[int]cbor.RawMessage) []byte {
			cred := ctap2test.Field[map[string]any](t, m, 7)
			id, _ := cred["id"].([]byte)
			if cred["type"] != "public-key" {
				t.Fatalf("credential type %v", cred["type"])
			}
			r, ok := e.byID[string(id)]
			if !ok || r.RPID != "a.example" {
				t.Fatalf("unknown or foreign credential %x", id)
			}
			user := ctap2test.Field[map[string]any](t, m, 6)
			if uid, _ := user["id"].([]byte); !bytes.Equal(uid, r.User.ID) || user["name"] != r.User.Name || user["displayName"] != r.User.DisplayName {
				t.Fatalf("user %v, want %+v", user, r.User)
			}
			pk := ctap2test.Field[map[int]any](t, m, 8)
			x, _ := pk[-2].([]byte)
			y, _ := pk[-3].([]byte)
			if pk[1] != uint64(2) || pk[3] != int64(-7) || pk[-1] != uint64(1) {
				t.Fatalf("public key header %v", pk)
			}
			want, _ := r.PublicKey.Bytes()
			if !bytes.Equal(append(append([]byte{4}, x...), y...), want) {
				t.Fatal("public key does not match the stored one")
			}
			if cp := ctap2test.Field[int](t, m, 10); cp != int(r.CredProtect) {
				t.Fatalf("credProtect %d, want %d", cp, r.CredProtect)
			}
			if lbk, ok := m[11]; ok != (r.LargeBlobKey != nil) {
				t.Fatalf("largeBlobKey present = %v", ok)
			} else if ok {
				var b []byte
				cbor.Unmarshal(lbk, &b)
				if !bytes.Equal(b, r.LargeBlobKey) {
					t.Fatal("largeBlobKey differs")
				}
			}
			return id
		}
		first := checkCred(m)
		st, m = e.next(cmEnumerateCredentialsNext)
		wantStatus(t, "GetNextCredential", st, ctap.StatusOK)
		if second := checkCred(m); bytes.Equal(first, second) {
			t.Fatal("same credential twice")
		}
		st, _ = e.next(cmEnumerateCredentialsNext)
		wantStatus(t, "GetNextCredential past the end", st, ctap.StatusNotAllowed)

		// Another command between Begin and GetNext ends the enumeration.
		st, _ = e.cm(cmEnumerateCredentialsBegin, map[int]any{1: ha[:]})
		wantStatus(t, "begin again", st, ctap.StatusOK)
		e.call(cmdClientPIN, map[int]any{2: cpGetPINRetries})
		st, _ = e.next(cmEnumerateCredentialsNext)
		wantStatus(t, "GetNext after another command", st, ctap.StatusNotAllowed)
		// So does another credentialManagement subcommand.
		st, _ = e.cm(cmEnumerateCredentialsBegin, map[int]any{1: ha[:]})
		wantStatus(t, "begin again", st, ctap.StatusOK)
		st, _ = e.cm(cmGetCredsMetadata, nil)
		wantStatus(t, "metadata", st, ctap.StatusOK)
		st, _ = e.next(cmEnumerateCredentialsNext)
		wantStatus(t, "GetNext after metadata", st, ctap.StatusNotAllowed)
		st, _ = e.next(cmEnumerateRPsGetNextRP)
		wantStatus(t, "GetNextRP without Begin", st, ctap.StatusNotAllowed)

		nobody := sha256.Sum256([]byte("nobody.example"))
		st, _ = e.cm(cmEnumerateCredentialsBegin, map[int]any{1: nobody[:]})
		wantStatus(t, "RP without credentials", st, ctap.StatusNoCredentials)
		st, _ = e.cm(cmEnumerateCredentialsBegin, map[int]any{1: ha[:5]})
		wantStatus(t, "short rpIDHash", st, ctap.StatusInvalidParameter)
		st, _ = e.cm(cmEnumerateCredentialsBegin, map[int]any{})
		wantStatus(t, "no rpIDHash", st, ctap.StatusMissingParameter)
	}
}

// An enumeration belongs to the channel that began it: GetNext from
// another channel is NOT_ALLOWED and ends it; the owner continues only
// while no other channel has spoken.
func TestCredMgmtEnumerationBelongsToChannel(t *testing.T) {
	for _, cmd := range []byte{cmdCredentialManagement, cmdCredentialMgmtPreview} {
		e := newCMTestEnv(t, 2, cmd)
		ha := sha256.Sum256([]byte("a.example"))
		e.CID = 7
		st, _ := e.cm(cmEnumerateCredentialsBegin, map[int]any{1: ha[:]})
		wantStatus(t, "enumerateCredentialsBegin on 7", st, ctap.StatusOK)
		e.CID = 8
		st, _ = e.next(cmEnumerateCredentialsNext)
		wantStatus(t, "GetNextCredential from another channel", st, ctap.StatusNotAllowed)
		e.CID = 7
		st, _ = e.next(cmEnumerateCredentialsNext)
		wantStatus(t, "GetNextCredential by the owner after another channel asked", st, ctap.StatusNotAllowed)

		st, _ = e.cm(cmEnumerateRPsBegin, nil)
		wantStatus(t, "enumerateRPsBegin on 7", st, ctap.StatusOK)
		e.CID = 8
		st, _ = e.next(cmEnumerateRPsGetNextRP)
		wantStatus(t, "GetNextRP from another channel", st, ctap.StatusNotAllowed)
		e.CID = 7
		st, _ = e.cm(cmEnumerateRPsBegin, nil)
		wantStatus(t, "enumerateRPsBegin on 7 again", st, ctap.StatusOK)
		st, _ = e.next(cmEnumerateRPsGetNextRP)
		wantStatus(t, "GetNextRP by the owner", st, ctap.StatusOK)
	}
}

func TestCredMgmtDeleteAndUpdate(t *testing.T) {
	for _, cmd := range []byte{cmdCredentialManagement, cmdCredentialMgmtPreview} {
		for _, proto := range []uint64{1, 2} {
			e := newCMTestEnv(t, proto, cmd)
			var target tpmstore.Resident
			for _, r := range e.byID {
				if r.RPID == "a.example" && r.LargeBlobKey == nil {
					target = r
				}
			}
			desc := map[string]any{"id": target.CredentialID, "type": "public-key"}

			// updateUserInformation: same user ID, new names.
			st, _ := e.cm(cmUpdateUserInformation, map[int]any{2: desc, 3: map[string]any{"id": target.User.ID, "name": "renamed"}})
			wantStatus(t, "updateUserInformation", st, ctap.StatusOK)
			got, _ := e.store.Residents(target.RPIDHash)
			i := 0
			for i < len(got) && !bytes.Equal(got[i].CredentialID, target.CredentialID) {
				i++
			}
			if i == len(got) || got[i].User.Name != "renamed" || got[i].User.DisplayName != "" || !bytes.Equal(got[i].User.ID, target.User.ID) {
				t.Fatalf("user after update: %+v", got)
			}
			st, _ = e.cm(cmUpdateUserInformation, map[int]any{2: desc, 3: map[string]any{"id": []byte("someone else")}})
			wantStatus(t, "update with another user ID", st, ctap.StatusInvalidParameter)
			st, _ = e.cm(cmUpdateUserInformation, map[int]any{2: desc})
			wantStatus(t, "update without user", st, ctap.StatusMissingParameter)

			// deleteCredential.
			st, _ = e.cm(cmDeleteCredential, map[int]any{2: desc})
			wantStatus(t, "deleteCredential", st, ctap.StatusOK)
			if n, _ := e.store.ResidentCount(); n != 2 {
				t.Fatalf("%d residents after delete", n)
			}
			st, _ = e.cm(cmDeleteCredential, map[int]any{2: desc})
			wantStatus(t, "delete again", st, ctap.StatusNoCredentials)
			st, _ = e.cm(cmDeleteCredential, map[int]any{})
			wantStatus(t, "delete without ID", st, ctap.StatusMissingParameter)
			st, m := e.cm(cmGetCredsMetadata, nil)
			wantStatus(t, "metadata", st, ctap.StatusOK)
			if n := ctap2test.Field[int](t, m, 1); n != 2 {
				t.Fatalf("existing after delete = %d", n)
			}
		}
	}
}

func TestCredMgmtAuthorization(t *testing.T) {
	e := newCMTestEnv(t, 2, cmdCredentialManagement)
	ha := sha256.Sum256([]byte("a.example"))
	hb := sha256.Sum256([]byte("b.example"))

	st, _ := e.call(cmdCredentialManagement, map[int]any{1: cmGetCredsMetadata, 3: 2})
	wantStatus(t, "no pinUvAuthParam", st, ctap.StatusPUATRequired)
	st, _ = e.call(cmdCredentialManagement, map[int]any{1: cmGetCredsMetadata, 4: e.p.mac(e.tok, []byte{cmGetCredsMetadata})})
	wantStatus(t, "no protocol", st, ctap.StatusMissingParameter)
	st, _ = e.call(cmdCredentialManagement, map[int]any{1: cmGetCredsMetadata, 3: 7, 4: e.p.mac(e.tok, []byte{cmGetCredsMetadata})})
	wantStatus(t, "protocol 7", st, ctap.StatusInvalidParameter)
	st, _ = e.call(cmdCredentialManagement, map[int]any{1: cmGetCredsMetadata, 3: 2, 4: e.p.mac(e.tok, []byte{cmEnumerateRPsBegin})})
	wantStatus(t, "param over another subcommand", st, ctap.StatusPINAuthInvalid)
	// The param covers subCommandParams: tampering with them is caught.
	params, _ := ctap2test.Enc.Marshal(map[int]any{1: ha[:]})
	st, _ = e.call(cmdCredentialManagement, map[int]any{1: cmEnumerateCredentialsBegin, 2: map[int]any{1: hb[:]}, 3: 2,
		4: e.p.mac(e.tok, append([]byte{cmEnumerateCredentialsBegin}, params...))})
	wantStatus(t, "params swapped", st, ctap.StatusPINAuthInvalid)
	st, _ = e.call(cmdCredentialManagement, map[int]any{1: 0x08, 3: 2, 4: e.p.mac(e.tok, []byte{0x08})})
	wantStatus(t, "subCommand 8", st, ctap.StatusInvalidSubcommand)
	st, _ = e.call(cmdCredentialManagement, map[int]any{3: 2})
	wantStatus(t, "no subCommand", st, ctap.StatusMissingParameter)
	st, _ = e.callRaw([]byte{cmdCredentialMgmtPreview, 0xa1, 0x01})
	wantStatus(t, "truncated CBOR", st, ctap.StatusInvalidCBOR)

	// A token without cm (legacy getPINToken) is refused.
	e.newToken(0, "")
	st, _ = e.cm(cmGetCredsMetadata, nil)
	wantStatus(t, "token without cm", st, ctap.StatusPINAuthInvalid)

	// A cm token bound to a.example sees only a.example.
	e.newToken(pinuv.PermCredentialManagement, "a.example")
	st, _ = e.cm(cmEnumerateCredentialsBegin, map[int]any{1: ha[:]})
	wantStatus(t, "bound token, own RP", st, ctap.StatusOK)
	st, _ = e.cm(cmEnumerateCredentialsBegin, map[int]any{1: hb[:]})
	wantStatus(t, "bound token, other RP", st, ctap.StatusPINAuthInvalid)
	st, _ = e.cm(cmGetCredsMetadata, nil)
	wantStatus(t, "bound token, metadata", st, ctap.StatusPINAuthInvalid)
	st, _ = e.cm(cmEnumerateRPsBegin, nil)
	wantStatus(t, "bound token, enumerate RPs", st, ctap.StatusPINAuthInvalid)
	var bCred []byte
	for _, r := range e.byID {
		if r.RPID == "b.example" {
			bCred = r.CredentialID
		}
	}
	st, _ = e.cm(cmDeleteCredential, map[int]any{2: map[string]any{"id": bCred, "type": "public-key"}})
	wantStatus(t, "bound token, delete other RP's credential", st, ctap.StatusPINAuthInvalid)
	if n, _ := e.store.ResidentCount(); n != 3 {
		t.Fatal("credential deleted with a token bound to another RP")
	}

	// An unbound cm token enumerates any RP and stays unbound.
	e.newToken(pinuv.PermCredentialManagement, "")
	for _, h := range [][32]byte{ha, hb, ha} {
		st, _ = e.cm(cmEnumerateCredentialsBegin, map[int]any{1: h[:]})
		wantStatus(t, "unbound token", st, ctap.StatusOK)
	}
	st, _ = e.cm(cmGetCredsMetadata, nil)
	wantStatus(t, "unbound token, metadata after enumeration", st, ctap.StatusOK)
}

// CTAP 2.0-era clients (python-fido2 0.8, older ykman) take their token
// from the legacy getPinToken (0x05) and call the prototype command 0x41:
// that pairing works, with both PIN protocols. 0x0A still needs a token
// with cm, and a token without cm from 0x09 is refused on 0x41 too.
func TestCredMgmtLegacyTokenOnPreview(t *testing.T) {
	for _, proto := range []uint64{1, 2} {
		e := newCMTestEnv(t, proto, cmdCredentialMgmtPreview)
		e.newToken(0, "") // getPinToken (0x05)
		st, m := e.cm(cmGetCredsMetadata, nil)
		wantStatus(t, "0x41 metadata, legacy token", st, ctap.StatusOK)
		if n := ctap2test.Field[int](t, m, 1); n != 3 {
			t.Fatalf("existingResidentCredentialsCount %d", n)
		}
		st, _ = e.cm(cmEnumerateRPsBegin, nil)
		wantStatus(t, "0x41 enumerateRPsBegin, legacy token", st, ctap.StatusOK)
		st, _ = e.next(cmEnumerateRPsGetNextRP)
		wantStatus(t, "0x41 enumerateRPsGetNextRP", st, ctap.StatusOK)
		ha := sha256.Sum256([]byte("a.example"))
		st, m = e.cm(cmEnumerateCredentialsBegin, map[int]any{1: ha[:]})
		wantStatus(t, "0x41 enumerateCredentialsBegin, legacy token", st, ctap.StatusOK)
		cred := ctap2test.Field[map[string]any](t, m, 7)
		st, _ = e.cm(cmDeleteCredential, map[int]any{2: map[string]any{"id": cred["id"], "type": "public-key"}})
		wantStatus(t, "0x41 deleteCredential, legacy token", st, ctap.StatusOK)
		if n, _ := e.store.ResidentCount(); n != 2 {
			t.Fatalf("%d residents after delete", n)
		}
		// The legacy token keeps mc and ga.
		if err := e.a.pin.Authorize(pinuv.PermMakeCredential|pinuv.PermGetAssertion, ""); err != nil {
			t.Fatalf("legacy token lost mc/ga: %v", err)
		}

		// 0x0A keeps requiring cm.
		e.cmd = cmdCredentialManagement
		st, _ = e.cm(cmGetCredsMetadata, nil)
		wantStatus(t, "0x0A metadata, legacy token", st, ctap.StatusPINAuthInvalid)
		st, _ = e.cm(cmEnumerateCredentialsBegin, map[int]any{1: ha[:]})
		wantStatus(t, "0x0A enumerateCredentialsBegin, legacy token", st, ctap.StatusPINAuthInvalid)

		// A 0x09 token without cm is refused on 0x41; with cm it works on both.
		e.cmd = cmdCredentialMgmtPreview
		e.newToken(pinuv.PermMakeCredential|pinuv.PermGetAssertion, "")
		st, _ = e.cm(cmGetCredsMetadata, nil)
		wantStatus(t, "0x41 metadata, 0x09 token with mc|ga", st, ctap.StatusPINAuthInvalid)
		e.newToken(pinuv.PermCredentialManagement, "")
		for _, cmd := range []byte{cmdCredentialMgmtPreview, cmdCredentialManagement} {
			e.cmd = cmd
			st, _ = e.cm(cmGetCredsMetadata, nil)
			wantStatus(t, "metadata, 0x09 token with cm", st, ctap.StatusOK)
		}

		// The preview grant is the authenticator's own: a client cannot
		// ask for it in the permissions it sends.
		st, _ = e.call(cmdClientPIN, map[int]any{1: proto, 2: cpGetTokenUsingPINWithPerms, 3: e.p.cose(),
			6: e.p.Encrypt(ctaphidtest.PINHash(cmTestPIN)), 9: int(pinuv.PermCredentialManagementPreview)})
		wantStatus(t, "0x09 asking for the internal preview bit", st, ctap.StatusInvalidParameter)
	}
}

func TestCredMgmtEmptyStore(t *testing.T) {
	e := newCMTestEnv(t, 1, cmdCredentialMgmtPreview)
	for _, r := range e.byID {
		if err := e.store.DeleteResident(r.CredentialID); err != nil {
			t.Fatal(err)
		}
	}
	st, m := e.cm(cmGetCredsMetadata, nil)
	wantStatus(t, "metadata", st, ctap.StatusOK)
	if n, r := ctap2test.Field[int](t, m, 1), ctap2test.Field[int](t, m, 2); n != 0 || r != 25 {
		t.Fatalf("metadata = %d, %d", n, r)
	}
	st, _ = e.cm(cmEnumerateRPsBegin, nil)
	wantStatus(t, "enumerate RPs of an empty store", st, ctap.StatusNoCredentials)
}

// FuzzCredentialManagementRequest feeds arbitrary parameter bytes to
// authenticatorCredentialManagement (both command codes) with no token
// issued: never a panic, never an internal error, never success.
func FuzzCredentialManagementRequest(f *testing.F) {
	f.Add([]byte{0xa1, 0x01, 0x01})
	f.Add([]byte{0xa4, 0x01, 0x04, 0x02, 0xa1, 0x01, 0x40, 0x03, 0x02, 0x04, 0x40})
	f.Add([]byte{0xa3, 0x01, 0x06, 0x02, 0xa1, 0x02, 0xa2, 0x62, 0x69, 0x64, 0x40, 0x64, 0x74, 0x79, 0x70, 0x65, 0x60, 0x03, 0x01})
	f.Add([]byte{0xa1, 0x01, 0x05})
	e := newPINTestEnv(f)
	f.Fuzz(func(t *testing.T, params []byte) {
		e.t = t
		for _, cmd := range []byte{cmdCredentialManagement, cmdCredentialMgmtPreview} {
			resp, err := e.a.Handle(context.Background(), ctap.Request{Cmd: ctap.CmdCBOR, Payload: append([]byte{cmd}, params...)})
			if err != nil || len(resp) != 1 {
				t.Fatalf("resp %x, err %v", resp, err)
			}
			if s := ctap.Status(resp[0]); s == ctap.StatusOK || s == ctap.StatusOther {
				t.Fatalf("params %x: status %v", params, s)
			}
		}
	})
}

// TestCredMgmtUpdateUserTruncatesNames: names set by updateUserInformation
// are cut to 64 bytes like makeCredential's, so one oversized name cannot
// push later enumerateCredentials (and getAssertion) answers past the
// 2048-byte response limit.
func TestCredMgmtUpdateUserTruncatesNames(t *testing.T) {
	e := newCMTestEnv(t, 2, cmdCredentialManagement)
	var target tpmstore.Resident
	for _, r := range e.byID {
		if r.RPID == "b.example" {
			target = r
		}
	}
	desc := map[string]any{"id": target.CredentialID, "type": "public-key"}
	long := string(bytes.Repeat([]byte("é"), 1500)) // 3000 bytes
	st, _ := e.cm(cmUpdateUserInformation, map[int]any{2: desc, 3: map[string]any{"id": target.User.ID, "name": long, "displayName": long}})
	wantStatus(t, "updateUserInformation", st, ctap.StatusOK)
	got, err := e.store.Residents(target.RPIDHash)
	if err != nil || len(got) != 1 {
		t.Fatalf("residents: %v %v", got, err)
	}
	if u := got[0].User; len(u.Name) > maxNameLength || len(u.DisplayName) > maxNameLength || u.Name != long[:maxNameLength] {
		t.Fatalf("names not truncated to %d bytes: %d, %d", maxNameLength, len(u.Name), len(u.DisplayName))
	}
	st, _ = e.cm(cmEnumerateCredentialsBegin, map[int]any{1: target.RPIDHash[:]})
	wantStatus(t, "enumerateCredentialsBegin after update", st, ctap.StatusOK)
}
