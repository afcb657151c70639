//go:build cgo && !nolibfido2

package interop

import (
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"testing"

	"github.com/fxamacker/cbor/v2"
	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/webauthn"
)

const (
	rpID   = "example.org"
	origin = "https://example.org"
)

type rpUser struct {
	id    []byte
	creds []webauthn.Credential
}

func (u *rpUser) WebAuthnID() []byte                         { return u.id }
func (u *rpUser) WebAuthnName() string                       { return "alice" }
func (u *rpUser) WebAuthnDisplayName() string                { return "Alice" }
func (u *rpUser) WebAuthnCredentials() []webauthn.Credential { return u.creds }

var b64 = base64.RawURLEncoding

// clientData builds clientDataJSON as a browser does, and its hash.
func clientData(t *testing.T, typ string, challenge protocol.URLEncodedBase64) ([]byte, []byte) {
	t.Helper()
	cd, err := json.Marshal(map[string]any{
		"type":        typ,
		"challenge":   b64.EncodeToString(challenge),
		"origin":      origin,
		"crossOrigin": false,
	})
	if err != nil {
		t.Fatal(err)
	}
	h := sha256.Sum256(cd)
	return cd, h[:]
}

// unwrapAuthData turns libfido2's CBOR byte string into raw authenticator data.
func unwrapAuthData(t *testing.T, wrapped []byte) []byte {
	t.Helper()
	var raw []byte
	if err := cbor.Unmarshal(wrapped, &raw); err != nil {
		t.Fatalf("authenticator data is not a CBOR byte string: %v", err)
	}
	return raw
}

// register runs a WebAuthn registration ceremony: the RP's options, the
// authenticator through libfido2, the attestation object and response
// JSON a browser would send, and the RP's verification.
func register(t *testing.T, rp *webauthn.WebAuthn, user *rpUser, dev *Device) *webauthn.Credential {
	t.Helper()
	cred, err := registerWith(t, rp, user, dev, false)
	if err != nil {
		t.Fatal(err)
	}
	return cred
}

// registerWith is register; with tamper set, one bit of the attestation
// signature is flipped on the way to the RP.
func registerWith(t *testing.T, rp *webauthn.WebAuthn, user *rpUser, dev *Device, tamper bool) (*webauthn.Credential, error) {
	t.Helper()
	creation, session, err := rp.BeginRegistration(user, webauthn.WithConveyancePreference(protocol.PreferDirectAttestation))
	if err != nil {
		t.Fatalf("BeginRegistration: %v", err)
	}
	cd, cdh := clientData(t, "webauthn.create", creation.Response.Challenge)
	c, err := dev.MakeCred(CredRequest{RPID: rpID, RPName: "Example", UserID: user.id, UserName: "alice", DisplayName: "Alice", ClientDataHash: cdh})
	if err != nil {
		t.Fatalf("makeCredential: %v", err)
	}
	if tamper {
		c.Sig[len(c.Sig)-1] ^= 1
	}
	attStmt := map[string]any{"sig": c.Sig}
	if len(c.X5C) > 0 {
		attStmt["x5c"] = [][]byte{c.X5C}
	}
	if c.Fmt == "packed" {
		attStmt["alg"] = -7
	}
	attObj, err := cbor.Marshal(map[string]any{"fmt": c.Fmt, "attStmt": attStmt, "authData": c.AuthDataRaw})
	if err != nil {
		t.Fatal(err)
	}
	body, err := json.Marshal(map[string]any{
		"id":    b64.EncodeToString(c.ID),
		"rawId": b64.EncodeToString(c.ID),
		"type":  "public-key",
		"response": map[string]any{
			"clientDataJSON":    b64.EncodeToString(cd),
			"attestationObject": b64.EncodeToString(attObj),
			"transports":        []string{"usb"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := protocol.ParseCredentialCreationResponseBytes(body)
	if err != nil {
		t.Fatalf("ParseCredentialCreationResponseBytes: %v", err)
	}
	cred, err := rp.CreateCredential(user, *session, parsed)
	if err != nil {
		return nil, fmt.Errorf("CreateCredential (%s attestation): %w", c.Fmt, err)
	}
	if cred.AttestationFormat != c.Fmt {
		t.Errorf("RP recorded attestation format %q, authenticator sent %q", cred.AttestationFormat, c.Fmt)
	}
	user.creds = append(user.creds, *cred)
	return cred, nil
}

// login runs an authentication ceremony and returns the RP's updated record.
func login(t *testing.T, rp *webauthn.WebAuthn, user *rpUser, dev *Device) *webauthn.Credential {
	t.Helper()
	assertion, session, err := rp.BeginLogin(user)
	if err != nil {
		t.Fatalf("BeginLogin: %v", err)
	}
	cd, cdh := clientData(t, "webauthn.get", assertion.Response.Challenge)
	var allow [][]byte
	for _, c := range assertion.Response.AllowedCredentials {
		allow = append(allow, c.CredentialID)
	}
	as, err := dev.GetAssert(AssertRequest{RPID: rpID, ClientDataHash: cdh, AllowList: allow, UP: OptTrue})
	if err != nil || len(as) != 1 {
		t.Fatalf("getAssertion: %v", err)
	}
	resp := map[string]any{
		"clientDataJSON":    b64.EncodeToString(cd),
		"authenticatorData": b64.EncodeToString(unwrapAuthData(t, as[0].AuthData)),
		"signature":         b64.EncodeToString(as[0].Sig),
	}
	if len(as[0].UserID) > 0 {
		resp["userHandle"] = b64.EncodeToString(as[0].UserID)
	}
	body, err := json.Marshal(map[string]any{
		"id": b64.EncodeToString(as[0].ID), "rawId": b64.EncodeToString(as[0].ID),
		"type": "public-key", "response": resp,
	})
	if err != nil {
		t.Fatal(err)
	}
	parsed, err := protocol.ParseCredentialRequestResponseBytes(body)
	if err != nil {
		t.Fatalf("ParseCredentialRequestResponseBytes: %v", err)
	}
	cred, err := rp.ValidateLogin(user, *session, parsed)
	if err != nil {
		t.Fatalf("ValidateLogin: %v", err)
	}
	for i := range user.creds {
		if string(user.creds[i].ID) == string(cred.ID) {
			user.creds[i] = *cred
		}
	}
	return cred
}

func TestWebAuthnRelyingParty(t *testing.T) {
	for _, mode := range []string{"ctap2", "u2f"} {
		t.Run(mode, func(t *testing.T) {
			d := startDaemon(t)
			dev := d.open(t)
			if mode == "u2f" {
				dev.ForceU2F()
			}
			rp, err := webauthn.New(&webauthn.Config{RPID: rpID, RPDisplayName: "Example", RPOrigins: []string{origin}})
			if err != nil {
				t.Fatalf("webauthn.New: %v", err)
			}
			user := &rpUser{id: []byte("alice-" + mode)}
			if _, err := registerWith(t, rp, user, dev, true); err == nil {
				t.Fatal("the RP accepted a registration with a tampered attestation signature")
			}
			reg := register(t, rp, user, dev)
			want := map[string]string{"ctap2": "packed", "u2f": "fido-u2f"}[mode]
			if reg.AttestationFormat != want {
				t.Errorf("attestation format %q, want %q", reg.AttestationFormat, want)
			}
			if !reg.Flags.UserPresent {
				t.Error("registration without user presence")
			}
			last := reg.Authenticator.SignCount
			for i := 0; i < 3; i++ {
				cred := login(t, rp, user, dev)
				if cred.Authenticator.CloneWarning {
					t.Error("the RP raised a clone warning")
				}
				if cred.Authenticator.SignCount <= last {
					t.Errorf("login %d: counter %d did not increase over %d", i, cred.Authenticator.SignCount, last)
				}
				last = cred.Authenticator.SignCount
			}
		})
	}
}
