//go:build cgo && !nolibfido2

package interop

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"testing"
)

func hash(s string) []byte {
	h := sha256.Sum256([]byte(s))
	return h[:]
}

const (
	flagUP = 0x01
	flagUV = 0x04
	flagAT = 0x40
	flagED = 0x80
)

func makeCred(t *testing.T, dev *Device, r CredRequest) *Cred {
	t.Helper()
	if r.RPID == "" {
		r.RPID = "example.org"
	}
	if r.UserID == nil {
		r.UserID = []byte("user-" + r.UserName)
	}
	if r.ClientDataHash == nil {
		r.ClientDataHash = hash("mc " + r.UserName)
	}
	c, err := dev.MakeCred(r)
	if err != nil {
		t.Fatalf("fido_dev_make_cred %+v: %v", r, err)
	}
	if err := c.Verify(); err != nil {
		t.Fatalf("verifying the %s attestation: %v", c.Fmt, err)
	}
	return c
}

func wantErr(t *testing.T, what string, err error, want Err) {
	t.Helper()
	var got Err
	if !errors.As(err, &got) || got != want {
		t.Errorf("%s: %v, want %v", what, err, want)
	}
}

func TestMakeCredentialAndAssert(t *testing.T) {
	d := startDaemon(t)
	dev := d.open(t)
	for _, tc := range []CredRequest{
		{UserName: "plain"},
		{UserName: "resident", RK: true},
		{UserName: "prot1", CredProtect: CredProtUVOptional},
		{UserName: "prot2", CredProtect: CredProtUVOptWithID, RK: true},
		{UserName: "prot3", CredProtect: CredProtUVRequired, RK: true},
		{UserName: "hmac", HMACSecret: true},
	} {
		t.Run(tc.UserName, func(t *testing.T) {
			if tc.CredProtect == CredProtUVRequired {
				// A level-3 key is bound to the PIN in the TPM; with no PIN
				// set there is nothing to bind it to (TestPIN makes one).
				tc.RPID, tc.UserID, tc.ClientDataHash = "example.org", []byte("user-prot3"), hash("mc prot3")
				_, err := dev.MakeCred(tc)
				wantErr(t, "credProtect 3 without a PIN", err, ErrPINNotSet)
				return
			}
			c := makeCred(t, dev, tc)
			if c.Fmt != "packed" || len(c.X5C) != 0 {
				t.Errorf("attestation fmt %q with %d-byte x5c, want packed self attestation", c.Fmt, len(c.X5C))
			}
			if c.Flags&(flagUP|flagAT) != flagUP|flagAT {
				t.Errorf("makeCredential flags %#x lack UP|AT", c.Flags)
			}
			if c.Prot != tc.CredProtect {
				t.Errorf("credProtect echoed %d, want %d", c.Prot, tc.CredProtect)
			}
			if len(c.PubKey) != 64 || len(c.ID) == 0 || len(c.ID) > 255 {
				t.Errorf("public key %d bytes, credential ID %d bytes", len(c.PubKey), len(c.ID))
			}
			// A tampered signature must fail: the check above is real.
			bad := *c
			bad.Sig = append([]byte(nil), c.Sig...)
			bad.Sig[len(bad.Sig)-1] ^= 1
			if err := bad.Verify(); err == nil {
				t.Error("a tampered attestation signature verified")
			}

			ar := AssertRequest{RPID: "example.org", ClientDataHash: hash("ga " + tc.UserName), AllowList: [][]byte{c.ID}, UP: OptTrue}
			as, err := dev.GetAssert(ar)
			if err != nil || len(as) != 1 {
				t.Fatalf("fido_dev_get_assert: %v (%d statements)", err, len(as))
			}
			if err := VerifyAssertion(ar, as[0], c.PubKey); err != nil {
				t.Errorf("fido_assert_verify (up): %v", err)
			}
			if as[0].Flags&flagUP == 0 || as[0].SigCount <= c.SigCount {
				t.Errorf("assertion flags %#x counter %d (after %d)", as[0].Flags, as[0].SigCount, c.SigCount)
			}
			other := ar
			other.ClientDataHash = hash("something else")
			wantErr(t, "fido_assert_verify with another clientDataHash", VerifyAssertion(other, as[0], c.PubKey), ErrInvalidSig)

			// up=false, as ssh probes: no UP flag, still a valid signature.
			ar.UP = OptFalse
			as2, err := dev.GetAssert(ar)
			if err != nil || len(as2) != 1 {
				t.Fatalf("fido_dev_get_assert up=false: %v", err)
			}
			if as2[0].Flags&flagUP != 0 {
				t.Errorf("up=false assertion has flags %#x", as2[0].Flags)
			}
			if err := VerifyAssertion(ar, as2[0], c.PubKey); err != nil {
				t.Errorf("fido_assert_verify (up=false): %v", err)
			}
			if as2[0].SigCount <= as[0].SigCount {
				t.Errorf("counter %d did not increase over %d", as2[0].SigCount, as[0].SigCount)
			}
		})
	}
}

func TestHMACSecret(t *testing.T) {
	d := startDaemon(t)
	dev := d.open(t)
	c := makeCred(t, dev, CredRequest{UserName: "hmac", HMACSecret: true})
	get := func(salt []byte) []byte {
		t.Helper()
		ar := AssertRequest{RPID: "example.org", ClientDataHash: hash("hmac"), AllowList: [][]byte{c.ID}, UP: OptTrue, HMACSalt: salt}
		as, err := dev.GetAssert(ar)
		if err != nil || len(as) != 1 {
			t.Fatalf("fido_dev_get_assert with hmac-secret: %v", err)
		}
		if as[0].Flags&flagED == 0 {
			t.Errorf("hmac-secret assertion flags %#x lack ED", as[0].Flags)
		}
		if err := VerifyAssertion(ar, as[0], c.PubKey); err != nil {
			t.Errorf("fido_assert_verify: %v", err)
		}
		return as[0].HMACSecret
	}
	s1 := bytes.Repeat([]byte{1}, 32)
	s2 := bytes.Repeat([]byte{2}, 32)
	a, b, c2 := get(s1), get(s1), get(s2)
	if len(a) != 32 {
		t.Fatalf("hmac-secret output of %d bytes", len(a))
	}
	if !bytes.Equal(a, b) {
		t.Error("hmac-secret is not stable for the same salt")
	}
	if bytes.Equal(a, c2) {
		t.Error("hmac-secret is the same for different salts")
	}
}

func TestPIN(t *testing.T) {
	d := startDaemon(t)
	dev := d.open(t)
	if n, err := dev.RetryCount(); err != nil || n != 8 {
		t.Fatalf("retries before a PIN: %d, %v; want 8", n, err)
	}
	if err := dev.SetPIN("1234"); err != nil {
		t.Fatalf("fido_dev_set_pin: %v", err)
	}
	info, err := dev.Info()
	if err != nil || !info.Options["clientPin"] {
		t.Fatalf("clientPin option after setting a PIN: %v (%v)", info.Options, err)
	}
	if err := dev.ChangePIN("5678", "1234"); err != nil {
		t.Fatalf("change PIN: %v", err)
	}
	// Wrong PINs count down.
	for want := 7; want >= 6; want-- {
		wantErr(t, "change PIN with a wrong PIN", dev.ChangePIN("0000", "9999"), ErrPINInvalid)
		if n, err := dev.RetryCount(); err != nil || n != want {
			t.Errorf("retries after a wrong PIN: %d (%v), want %d", n, err, want)
		}
	}
	// UV through the PIN: makeCredential and getAssertion carry UV.
	c := makeCred(t, dev, CredRequest{UserName: "uv", RK: true, CredProtect: CredProtUVRequired, PIN: "5678"})
	if c.Flags&flagUV == 0 {
		t.Errorf("makeCredential with a PIN token: flags %#x lack UV", c.Flags)
	}
	if n, err := dev.RetryCount(); err != nil || n != 8 {
		t.Errorf("retries after the right PIN: %d (%v), want 8", n, err)
	}
	ar := AssertRequest{RPID: "example.org", ClientDataHash: hash("uv"), AllowList: [][]byte{c.ID}, UP: OptTrue, UV: OptTrue, PIN: "5678"}
	as, err := dev.GetAssert(ar)
	if err != nil || len(as) != 1 {
		t.Fatalf("fido_dev_get_assert with PIN: %v", err)
	}
	if as[0].Flags&(flagUP|flagUV) != flagUP|flagUV {
		t.Errorf("assertion with PIN: flags %#x", as[0].Flags)
	}
	vr := ar
	vr.PIN = ""
	if err := VerifyAssertion(vr, as[0], c.PubKey); err != nil {
		t.Errorf("fido_assert_verify (uv): %v", err)
	}
	// Level 3 needs UV; without it the credential does not exist.
	_, err = dev.GetAssert(AssertRequest{RPID: "example.org", ClientDataHash: hash("no uv"), AllowList: [][]byte{c.ID}, UP: OptTrue})
	wantErr(t, "credProtect 3 without UV", err, ErrNoCredentials)
	// Its key is bound to the PIN object in the TPM, which a PIN change
	// keeps: the new PIN signs, the old one no longer verifies the user.
	if err := dev.ChangePIN("2468", "5678"); err != nil {
		t.Fatalf("change PIN: %v", err)
	}
	ar.PIN = "2468"
	if as, err = dev.GetAssert(ar); err != nil || len(as) != 1 {
		t.Fatalf("fido_dev_get_assert with the new PIN: %v", err)
	}
	if err := VerifyAssertion(vr, as[0], c.PubKey); err != nil {
		t.Errorf("fido_assert_verify after the PIN change: %v", err)
	}
	// Three wrong PINs in a row block PIN use until a power cycle.
	wantErr(t, "1st wrong PIN", dev.ChangePIN("0000", "1111"), ErrPINInvalid)
	wantErr(t, "2nd wrong PIN", dev.ChangePIN("0000", "1111"), ErrPINInvalid)
	wantErr(t, "3rd wrong PIN", dev.ChangePIN("0000", "1111"), ErrPINAuthBlocked)
	if n, err := dev.RetryCount(); err != nil || n != 5 {
		t.Errorf("retries after three wrong PINs: %d (%v), want 5", n, err)
	}
	wantErr(t, "the right PIN while blocked", dev.ChangePIN("0000", "2468"), ErrPINAuthBlocked)
}

func TestCredentialManagement(t *testing.T) {
	d := startDaemon(t)
	dev := d.open(t)
	const pin = "4321"
	if err := dev.SetPIN(pin); err != nil {
		t.Fatalf("fido_dev_set_pin: %v", err)
	}
	creds := map[string]*Cred{}
	for i := 1; i <= 3; i++ {
		name := fmt.Sprintf("user%d", i)
		c := makeCred(t, dev, CredRequest{UserName: name, DisplayName: "User " + name, RK: true, CredProtect: CredProtUVOptWithID, PIN: pin})
		creds[string(c.ID)] = c
	}
	makeCred(t, dev, CredRequest{RPID: "other.example", RPName: "Other", UserName: "someone", RK: true, PIN: pin})
	makeCred(t, dev, CredRequest{UserName: "not-resident", PIN: pin})

	md, err := dev.CredsMetadata(pin)
	if err != nil {
		t.Fatalf("fido_credman_get_dev_metadata: %v", err)
	}
	if md.Existing != 4 || md.Remaining == 0 {
		t.Errorf("metadata %+v, want 4 existing and room for more", md)
	}
	rps, err := dev.RPs(pin)
	if err != nil {
		t.Fatalf("fido_credman_get_dev_rp: %v", err)
	}
	seen := map[string]bool{}
	for _, rp := range rps {
		seen[rp.ID] = true
		if !bytes.Equal(rp.Hash, hash(rp.ID)) {
			t.Errorf("RP %q hash %x", rp.ID, rp.Hash)
		}
	}
	if len(rps) != 2 || !seen["example.org"] || !seen["other.example"] {
		t.Errorf("RPs %+v, want example.org and other.example", rps)
	}
	rks, err := dev.RKs("example.org", pin)
	if err != nil {
		t.Fatalf("fido_credman_get_dev_rk: %v", err)
	}
	if len(rks) != 3 {
		t.Fatalf("%d resident credentials for example.org, want 3", len(rks))
	}
	for _, rk := range rks {
		c, ok := creds[string(rk.ID)]
		if !ok {
			t.Errorf("enumerated an unknown credential %x", rk.ID)
			continue
		}
		if !bytes.Equal(rk.PubKey, c.PubKey) {
			t.Errorf("%s: enumerated public key differs from makeCredential's", rk.UserName)
		}
		if rk.Prot != CredProtUVOptWithID || rk.UserName != c.Req.UserName || rk.DisplayName != c.Req.DisplayName || !bytes.Equal(rk.UserID, c.Req.UserID) {
			t.Errorf("enumerated %+v for %+v", rk, c.Req)
		}
	}

	// Delete one, rename another.
	if err := dev.DeleteRK(rks[0].ID, pin); err != nil {
		t.Fatalf("fido_credman_del_dev_rk: %v", err)
	}
	if err := dev.UpdateRKUser(rks[1].ID, rks[1].UserID, "renamed", "Renamed User", pin); err != nil {
		t.Fatalf("fido_credman_set_dev_rk: %v", err)
	}
	after, err := dev.RKs("example.org", pin)
	if err != nil {
		t.Fatalf("fido_credman_get_dev_rk after changes: %v", err)
	}
	if len(after) != 2 {
		t.Fatalf("%d credentials after a delete, want 2", len(after))
	}
	for _, rk := range after {
		if bytes.Equal(rk.ID, rks[0].ID) {
			t.Error("the deleted credential is still enumerated")
		}
		if bytes.Equal(rk.ID, rks[1].ID) && (rk.UserName != "renamed" || rk.DisplayName != "Renamed User") {
			t.Errorf("updated user is %q / %q", rk.UserName, rk.DisplayName)
		}
	}
	if md, err := dev.CredsMetadata(pin); err != nil || md.Existing != 3 {
		t.Errorf("metadata after delete %+v (%v), want 3", md, err)
	}
	// Discovery no longer finds the deleted credential.
	as, err := dev.GetAssert(AssertRequest{RPID: "example.org", ClientDataHash: hash("x"), UP: OptTrue, UV: OptTrue, PIN: pin})
	if err != nil || len(as) != 2 {
		t.Fatalf("discoverable assertion after delete: %d statements (%v), want 2", len(as), err)
	}
	for _, a := range as {
		if bytes.Equal(a.ID, rks[0].ID) {
			t.Error("discoverable assertion returned the deleted credential")
		}
	}
	// Deleting revokes: the deleted ID no longer signs even when named.
	_, err = dev.GetAssert(AssertRequest{RPID: "example.org", ClientDataHash: hash("y"), AllowList: [][]byte{rks[0].ID}, UP: OptTrue, UV: OptTrue, PIN: pin})
	wantErr(t, "assertion naming the deleted credential", err, ErrNoCredentials)
	wantErr(t, "credential management with a wrong PIN", func() error { _, err := dev.RPs("0000"); return err }(), ErrPINInvalid)
}

func TestGetNextAssertion(t *testing.T) {
	d := startDaemon(t)
	dev := d.open(t)
	pubs := map[string][]byte{}
	for i := 1; i <= 3; i++ {
		c := makeCred(t, dev, CredRequest{RPID: "rk.example", UserName: fmt.Sprintf("u%d", i), RK: true})
		pubs[string(c.ID)] = c.PubKey
	}
	makeCred(t, dev, CredRequest{RPID: "elsewhere.example", UserName: "x", RK: true})
	ar := AssertRequest{RPID: "rk.example", ClientDataHash: hash("discover"), UP: OptTrue}
	as, err := dev.GetAssert(ar)
	if err != nil {
		t.Fatalf("fido_dev_get_assert without an allow list: %v", err)
	}
	if len(as) != 3 {
		t.Fatalf("%d assertion statements, want 3", len(as))
	}
	got := map[string]bool{}
	for i, a := range as {
		pub, ok := pubs[string(a.ID)]
		if !ok {
			t.Errorf("statement %d names an unknown credential", i)
			continue
		}
		got[string(a.ID)] = true
		if len(a.UserID) == 0 {
			t.Errorf("statement %d has no user ID", i)
		}
		if err := VerifyAssertion(ar, a, pub); err != nil {
			t.Errorf("statement %d: fido_assert_verify: %v", i, err)
		}
	}
	if len(got) != 3 {
		t.Errorf("statements name %d distinct credentials, want 3", len(got))
	}
}

func TestReset(t *testing.T) {
	d := startDaemon(t)
	dev := d.open(t)
	if err := dev.SetPIN("1234"); err != nil {
		t.Fatalf("fido_dev_set_pin: %v", err)
	}
	c := makeCred(t, dev, CredRequest{UserName: "gone", RK: true, PIN: "1234"})
	if err := dev.Reset(); err != nil {
		t.Fatalf("fido_dev_reset within 10 s of start: %v", err)
	}
	_, err := dev.GetAssert(AssertRequest{RPID: "example.org", ClientDataHash: hash("x"), AllowList: [][]byte{c.ID}, UP: OptTrue})
	wantErr(t, "assertion after reset", err, ErrNoCredentials)
	_, err = dev.GetAssert(AssertRequest{RPID: "example.org", ClientDataHash: hash("x"), UP: OptTrue})
	wantErr(t, "discoverable assertion after reset", err, ErrNoCredentials)
	info, err := dev.Info()
	if err != nil || info.Options["clientPin"] {
		t.Errorf("clientPin after reset: %v (%v), want false", info.Options["clientPin"], err)
	}
}

func TestU2F(t *testing.T) {
	d := startDaemon(t)
	dev := d.open(t)
	dev.ForceU2F()
	if dev.IsFIDO2() {
		t.Fatal("fido_dev_force_u2f did not take")
	}
	c := makeCred(t, dev, CredRequest{RPID: "https://u2f.example", UserName: "u2f"})
	if c.Fmt != "fido-u2f" || len(c.X5C) == 0 {
		t.Fatalf("U2F registration: fmt %q, %d-byte certificate", c.Fmt, len(c.X5C))
	}
	ar := AssertRequest{RPID: "https://u2f.example", ClientDataHash: hash("u2f sign"), AllowList: [][]byte{c.ID}, UP: OptTrue}
	var last uint32
	for i := 0; i < 2; i++ {
		as, err := dev.GetAssert(ar)
		if err != nil || len(as) != 1 {
			t.Fatalf("U2F authenticate: %v", err)
		}
		if err := VerifyAssertion(ar, as[0], c.PubKey); err != nil {
			t.Errorf("fido_assert_verify of a U2F signature: %v", err)
		}
		if as[0].Flags&flagUP == 0 || as[0].SigCount <= last {
			t.Errorf("U2F assertion flags %#x counter %d after %d", as[0].Flags, as[0].SigCount, last)
		}
		last = as[0].SigCount
	}
	// (libfido2 has no up=false over U2F; P1 0x08 is covered by ctap/u2f's
	// unit tests.)
	// check-only (P1 0x07) finds the key handle, so registering again with
	// it excluded is refused.
	_, err := dev.MakeCred(CredRequest{RPID: "https://u2f.example", UserID: []byte("u"), UserName: "again",
		ClientDataHash: hash("again"), ExcludeList: [][]byte{c.ID}})
	wantErr(t, "U2F register with the key handle excluded", err, ErrCredentialExcl)
	// A key handle for another appId is not ours.
	_, err = dev.GetAssert(AssertRequest{RPID: "https://other.example", ClientDataHash: hash("x"), AllowList: [][]byte{c.ID}, UP: OptTrue})
	wantErr(t, "U2F authenticate for another appId", err, ErrNoCredentials)

	// The CTAP2 side accepts the U2F credential for the same RP ID.
	dev2 := d.open(t)
	as, err := dev2.GetAssert(ar)
	if err != nil || len(as) != 1 {
		t.Fatalf("CTAP2 assertion with a U2F key handle: %v", err)
	}
	if err := VerifyAssertion(ar, as[0], c.PubKey); err != nil {
		t.Errorf("fido_assert_verify: %v", err)
	}
}
