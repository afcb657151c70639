package ctap2_test

import (
	"testing"

	"github.com/go-webauthn/webauthn/protocol"
	"github.com/go-webauthn/webauthn/protocol/webauthncose"

	"github.com/tpm-fido/tpm-fido/ctap"
)

// TestAttestationAcceptedByRelyingParty has a WebAuthn relying-party
// library check the packed self-attestation and authData the
// authenticator makes, with nothing of this project's code in the path.
func TestAttestationAcceptedByRelyingParty(t *testing.T) {
	e := newEnv(t)
	for _, o := range []mcOpts{{}, {rk: true, credProtect: 2, hmacSecret: true}} {
		h := cdh("webauthn")
		st, m := e.call(cMakeCredential, mcRequest(o, h))
		wantStatus(t, "makeCredential", st, ctap.StatusOK)
		ao := protocol.AttestationObject{
			RawAuthData:  field[[]byte](t, m, 2),
			Format:       field[string](t, m, 1),
			AttStatement: field[map[string]any](t, m, 3),
		}
		if err := ao.AuthData.Unmarshal(ao.RawAuthData); err != nil {
			t.Fatalf("authData rejected: %v", err)
		}
		params := []protocol.CredentialParameter{{Type: protocol.PublicKeyCredentialType, Algorithm: webauthncose.AlgES256}}
		if err := ao.Verify("example.org", h, false, true, nil, params, protocol.AttestationPolicy{}, protocol.SignaturePolicy{}); err != nil {
			t.Fatalf("%+v: relying party rejects the registration: %v", o, err)
		}
		// Self attestation is "basic_surrogate" in FIDO metadata terms.
		if ao.Type != "basic_surrogate" {
			t.Errorf("attestation type %q, want basic_surrogate (self)", ao.Type)
		}
		// And the library does check: another clientDataHash fails.
		if err := ao.Verify("example.org", cdh("other"), false, true, nil, params, protocol.AttestationPolicy{}, protocol.SignaturePolicy{}); err == nil {
			t.Error("relying party accepted a signature over another clientDataHash")
		}
	}
}
