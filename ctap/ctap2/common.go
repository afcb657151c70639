package ctap2

import (
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"unicode/utf8"

	"github.com/fxamacker/cbor/v2"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2/pinuv"
	"github.com/tpm-fido/tpm-fido/presence"
	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// Limits on the entities a request carries (WebAuthn §5.4.3, CTAP 2.1
// §6.1: authenticators may truncate names to 64 bytes).
const (
	maxUserIDLength  = 64
	maxNameLength    = 64
	maxRPIDLength    = 256
	credTypePublicKy = "public-key"
)

// pinUvAuth is the pinUvAuthParam/pinUvAuthProtocol pair of a request.
type pinUvAuth struct {
	param    []byte
	present  bool
	protocol uint64
	protoSet bool
}

func (p params) pinUvAuth(paramKey, protoKey uint64) (pinUvAuth, error) {
	var (
		v   pinUvAuth
		err error
	)
	if v.present, err = opt(p, paramKey, asBytes, &v.param); err != nil {
		return v, err
	}
	if v.protoSet, err = opt(p, protoKey, asUint, &v.protocol); err != nil {
		return v, err
	}
	return v, nil
}

// checkPinUvAuthPrelude is the common start of makeCredential (§6.1.2)
// and getAssertion (§6.2.2): step 1, a zero-length pinUvAuthParam asks
// for a touch only; step 2, pinUvAuthProtocol must come with
// pinUvAuthParam and be one we speak; then clientDataHash must be 32
// bytes.
func (a *Authenticator) checkPinUvAuthPrelude(ctx context.Context, pua pinUvAuth, clientDataHash []byte, req presence.Request) error {
	if err := a.checkEmptyPinUvAuth(ctx, pua, req); err != nil {
		return err
	}
	if pua.present {
		if !pua.protoSet {
			return ctap.StatusMissingParameter
		}
		if _, err := a.pin.Protocol(pua.protocol); err != nil {
			return ctap.StatusInvalidParameter
		}
	}
	if len(clientDataHash) != 32 {
		return ctap.StatusInvalidLength
	}
	return nil
}

// checkEmptyPinUvAuth is step 1 of makeCredential and getAssertion
// (CTAP 2.1 §6.1.2, §6.2.2): a zero-length pinUvAuthParam is how a
// platform asks the user to touch a key (libfido2 selects a device this
// way). After the touch the answer is PIN_INVALID if a PIN is set, else
// PIN_NOT_SET. It returns nil when the request carries no such param.
func (a *Authenticator) checkEmptyPinUvAuth(ctx context.Context, pua pinUvAuth, req presence.Request) error {
	if !pua.present || len(pua.param) != 0 {
		return nil
	}
	req.Op = presence.OpSelect
	if err := a.confirmPresence(ctx, req); err != nil {
		return err
	}
	if a.cfg.Store.PINIsSet() {
		return ctap.StatusPINInvalid
	}
	return ctap.StatusPINNotSet
}

// verifyPinUvAuth checks pinUvAuthParam over clientDataHash and the
// token's permission and RP binding (§6.1.2 step 11, §6.2.2 step 6).
func (a *Authenticator) verifyPinUvAuth(pua pinUvAuth, clientDataHash []byte, perm pinuv.Permission, rpID string) error {
	if !pua.protoSet {
		return ctap.StatusMissingParameter
	}
	if _, err := a.pin.Protocol(pua.protocol); err != nil {
		return ctap.StatusInvalidParameter
	}
	if err := a.pin.VerifyParam(pua.protocol, clientDataHash, pua.param); err != nil {
		return statusOr(err, ctap.StatusPINAuthInvalid)
	}
	if err := a.pin.Authorize(perm, rpID); err != nil {
		return statusOr(err, ctap.StatusPINAuthInvalid)
	}
	return nil
}

// statusOr returns err if it carries a CTAP status, else def.
func statusOr(err error, def ctap.Status) error {
	var s ctap.Status
	if errors.As(err, &s) {
		return s
	}
	return def
}

// options parses an options map (text keys, boolean values). Unknown
// options are ignored.
func parseOptions(r cbor.RawMessage) (map[string]bool, error) {
	m, err := asTextMap(r)
	if err != nil {
		return nil, err
	}
	out := make(map[string]bool, len(m))
	for k, v := range m {
		b, err := asBool(v)
		if err != nil {
			return nil, err
		}
		out[k] = b
	}
	return out, nil
}

// descriptor is a PublicKeyCredentialDescriptor.
type descriptor struct {
	typ string
	id  []byte
}

// parseDescriptors parses an allowList/excludeList: an array of maps with
// "type" (text) and "id" (bytes); "transports" is ignored.
func parseDescriptors(r cbor.RawMessage) ([]descriptor, error) {
	var out []descriptor
	err := eachStruct(r, []string{"type", "id"}, func(m map[string]cbor.RawMessage) error {
		var d descriptor
		var err error
		if d.typ, err = asText(m["type"]); err != nil {
			return err
		}
		if d.id, err = asBytes(m["id"]); err != nil {
			return err
		}
		out = append(out, d)
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// openCredential checks id against rpIDHash in software. It returns nil
// for a credential that is not this store's for this RP.
func (a *Authenticator) openCredential(rpIDHash [32]byte, id []byte) *tpmstore.Credential {
	if len(id) == 0 || len(id) > defaultMaxCredentialIDLength {
		return nil
	}
	c, err := a.cfg.Store.OpenCredential(rpIDHash, id)
	if err != nil {
		if !errors.Is(err, tpmstore.ErrCredentialInvalid) {
			a.log.Warn("credential ID check failed", "err", err)
		}
		return nil
	}
	return c
}

// listedCredential is the credential an allowList or excludeList entry
// names, if the request may use it: of type public-key, made by this
// store for this RP (checked in software), and, for a credProtect 3
// credential, asked for by a verified user. Otherwise nil.
func (a *Authenticator) listedCredential(rpIDHash [32]byte, d descriptor, uv bool) *tpmstore.Credential {
	if d.typ != credTypePublicKy {
		return nil
	}
	c := a.openCredential(rpIDHash, d.id)
	if c == nil || (credProtectLevel(c.Options.CredProtect) == tpmstore.CredProtectUVRequired && !uv) {
		return nil
	}
	return c
}

// credProtectLevel normalises a stored level (0 means 1).
func credProtectLevel(l uint8) uint8 {
	if l == 0 {
		return tpmstore.CredProtectUVOptional
	}
	return l
}

// rpIDHash is SHA-256 of the RP ID.
func rpIDHash(rpID string) [32]byte { return sha256.Sum256([]byte(rpID)) }

// truncateUTF8 cuts s to at most n bytes without splitting a character.
func truncateUTF8(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	for len(s) > 0 && !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s
}

// signData returns the ECDSA signature of authData ‖ clientDataHash; uv
// says the request verified the user.
func (a *Authenticator) signData(c *tpmstore.Credential, authData, clientDataHash []byte, uv bool) ([]byte, error) {
	h := sha256.New()
	h.Write(authData)
	h.Write(clientDataHash)
	return a.signDigest(c, h.Sum(nil), uv)
}

// signDigest signs a SHA-256 digest with c. A PIN-bound credential
// (credProtect 3) is signed with the PIN hash held with the current
// pinUvAuthToken, which verified the user: the TPM uses its key with
// nothing less.
func (a *Authenticator) signDigest(c *tpmstore.Credential, digest []byte, uv bool) ([]byte, error) {
	var (
		sig []byte
		err error
	)
	if c.PINBound {
		secret, ok := a.pin.UVSecret()
		if !uv || !ok || len(secret) != cpPINHashLength {
			// The token that verified the user has ended meanwhile.
			return nil, fmt.Errorf("%w: the PIN-bound key needs the token's PIN", ctap.StatusPINAuthInvalid)
		}
		a.log.Debug("signing with a PIN-bound key (credProtect 3): TPM policy session with the token's PIN")
		sig, err = a.cfg.Store.SignWithPIN(c, digest, [cpPINHashLength]byte(secret))
		clear(secret)
	} else {
		sig, err = a.cfg.Store.Sign(c, digest)
	}
	if err != nil {
		return nil, fmt.Errorf("ctap2: sign: %w", err)
	}
	return sig, nil
}
