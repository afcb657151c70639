package ctap2

import (
	"context"
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"

	"github.com/tpm-fido/tpm-fido/attestation"
	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2/pinuv"
	"github.com/tpm-fido/tpm-fido/presence"
	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// makeCredential parameter keys (CTAP 2.1 §6.1).
const (
	mcClientDataHash    = 0x01
	mcRP                = 0x02
	mcUser              = 0x03
	mcPubKeyCredParams  = 0x04
	mcExcludeList       = 0x05
	mcExtensions        = 0x06
	mcOptions           = 0x07
	mcPinUvAuthParam    = 0x08
	mcPinUvAuthProtocol = 0x09
	mcEnterpriseAttest  = 0x0A
)

const algES256 = -7

// makeCredRequest is a parsed, type-checked makeCredential request.
type makeCredRequest struct {
	clientDataHash []byte
	rpID, rpName   string
	user           tpmstore.User
	es256          bool // ES256 offered in pubKeyCredParams
	exclude        []descriptor
	options        map[string]bool
	credProtect    uint8 // 0: not requested (or a value we ignore)
	hmacSecret     bool
	pua            pinUvAuth
}

func parseMakeCredential(raw []byte) (*makeCredRequest, error) {
	p, err := parseParams(raw)
	if err != nil {
		return nil, err
	}
	r := &makeCredRequest{options: map[string]bool{}}
	if r.clientDataHash, err = need(p, mcClientDataHash, asBytes); err != nil {
		return nil, err
	}
	// rp: {id: text, name?: text, icon?: text}
	rp, err := need(p, mcRP, asTextMap)
	if err != nil {
		return nil, err
	}
	if r.rpID, err = need(rp, "id", asText); err != nil {
		return nil, err
	}
	if _, err := opt(rp, "name", asText, &r.rpName); err != nil {
		return nil, err
	}
	// user: {id: bytes, name?: text, displayName?: text, icon?: text}
	user, err := need(p, mcUser, asTextMap)
	if err != nil {
		return nil, err
	}
	if r.user.ID, err = need(user, "id", asBytes); err != nil {
		return nil, err
	}
	if _, err := opt(user, "name", asText, &r.user.Name); err != nil {
		return nil, err
	}
	if _, err := opt(user, "displayName", asText, &r.user.DisplayName); err != nil {
		return nil, err
	}
	// pubKeyCredParams: [{type: text, alg: int}, ...]
	if r.es256, err = need(p, mcPubKeyCredParams, parsePubKeyCredParams); err != nil {
		return nil, err
	}
	if _, err := opt(p, mcExcludeList, parseDescriptors, &r.exclude); err != nil {
		return nil, err
	}
	if v, ok := p[mcExtensions]; ok {
		if err := r.parseExtensions(v); err != nil {
			return nil, err
		}
	}
	if _, err := opt(p, mcOptions, parseOptions, &r.options); err != nil {
		return nil, err
	}
	if r.pua, err = p.pinUvAuth(mcPinUvAuthParam, mcPinUvAuthProtocol); err != nil {
		return nil, err
	}
	if _, ok := p[mcEnterpriseAttest]; ok {
		// Enterprise attestation is not supported (§6.1.2 step 7).
		return nil, ctap.StatusInvalidParameter
	}
	return r, nil
}

// parsePubKeyCredParams checks every entry's shape and reports whether
// ES256 of type "public-key" is offered. Entries of other types are
// ignored (WebAuthn §5.8.2).
func parsePubKeyCredParams(r cbor.RawMessage) (bool, error) {
	es256 := false
	err := eachStruct(r, []string{"type", "alg"}, func(m map[string]cbor.RawMessage) error {
		typ, err := asText(m["type"])
		if err != nil {
			return err
		}
		alg, err := asInt(m["alg"])
		if err != nil {
			return err
		}
		if typ == credTypePublicKy && alg == algES256 {
			es256 = true
		}
		return nil
	})
	return es256, err
}

// parseExtensions reads the extensions this authenticator supports and
// type-checks them; unknown extensions are ignored (§6.1.2 step 13).
func (r *makeCredRequest) parseExtensions(raw cbor.RawMessage) error {
	m, err := asTextMap(raw)
	if err != nil {
		return err
	}
	if v, ok := m["credProtect"]; ok {
		lvl, err := asUint(v)
		if err != nil {
			return err
		}
		// A level outside 1..3 is not processed, so not echoed.
		if lvl >= 1 && lvl <= 3 {
			r.credProtect = uint8(lvl)
		}
	}
	_, err = opt(m, "hmac-secret", asBool, &r.hmacSecret)
	return err
}

// makeCredential handles authenticatorMakeCredential (CTAP 2.1 §6.1.2).
func (a *Authenticator) makeCredential(ctx context.Context, raw []byte) ([]byte, error) {
	r, err := parseMakeCredential(raw)
	if err != nil {
		return nil, err
	}
	prompt := presence.Request{Op: presence.OpRegister, RPID: r.rpID, UserName: r.user.Name, Challenge: r.clientDataHash}

	if err := a.checkPinUvAuthPrelude(ctx, r.pua, r.clientDataHash, prompt); err != nil {
		return nil, err
	}
	if r.rpID == "" || len(r.rpID) > maxRPIDLength {
		return nil, ctap.StatusInvalidParameter
	}
	if len(r.user.ID) == 0 || len(r.user.ID) > maxUserIDLength {
		return nil, ctap.StatusInvalidLength
	}
	// Step 3: only ES256; the TPM has no Ed25519.
	if !r.es256 {
		return nil, ctap.StatusUnsupportedAlgorithm
	}
	// Step 5: options.
	rk := r.options["rk"]
	if up, ok := r.options["up"]; ok && !up {
		return nil, ctap.StatusInvalidOption
	}
	if r.options["uv"] && !r.pua.present {
		// No built-in user verification; UV is only through a token.
		return nil, ctap.StatusInvalidOption
	}
	// Step 6: makeCredUvNotRqd: with a PIN set, a discoverable credential
	// still needs a pinUvAuthToken; a non-discoverable one does not.
	if a.cfg.Store.PINIsSet() && !r.pua.present && rk {
		return nil, ctap.StatusPUATRequired
	}
	// A credProtect 3 (userVerificationRequired) key is bound to the PIN
	// by a TPM policy (docs/tpmstore.md), so even its self-attestation,
	// its first signature, needs the PIN: with a PIN set that is a
	// pinUvAuthToken (PUAT_REQUIRED, which OpenSSH answers by asking for
	// the PIN); without one there is nothing to bind the key to, and a
	// key the TPM would let anyone use is not made: PIN_NOT_SET.
	if r.credProtect == tpmstore.CredProtectUVRequired && !r.pua.present {
		if !a.cfg.Store.PINIsSet() {
			a.log.Info("credProtect 3 (verify-required) credential refused: it is bound to the PIN, and no PIN is set (fido2-token -S, or tpm-fido pin set)", "rp", r.rpID)
			return nil, ctap.StatusPINNotSet
		}
		return nil, ctap.StatusPUATRequired
	}
	// Step 11: verify the token: mc permission, bound to this RP.
	uv := false
	if r.pua.present {
		if err := a.verifyPinUvAuth(r.pua, r.clientDataHash, pinuv.PermMakeCredential, r.rpID); err != nil {
			return nil, err
		}
		uv = true
	}
	hash := rpIDHash(r.rpID)

	// Step 12: excludeList. Foreign IDs fail in software; a credProtect=3
	// credential is only revealed to a verified user.
	for _, d := range r.exclude {
		if a.listedCredential(hash, d, uv) == nil {
			continue
		}
		if err := a.confirmPresence(ctx, prompt); errors.Is(err, ctap.StatusKeepaliveCancel) {
			return nil, err
		}
		return nil, ctap.StatusCredentialExcluded
	}
	if rk {
		n, err := a.cfg.Store.ResidentCount()
		if err != nil {
			return nil, fmt.Errorf("ctap2: makeCredential: resident count: %w", err)
		}
		if n >= a.cfg.Store.MaxResidents() && !a.replacesResident(hash, r.user.ID) {
			return nil, ctap.StatusKeyStoreFull
		}
	}

	// Step 14: user presence (always required for makeCredential).
	if err := a.confirmPresence(ctx, prompt); err != nil {
		return nil, err
	}
	if r.pua.present {
		a.pin.ClearPermissionsExceptLBW()
	}

	// Step 15-17: create the key and record a discoverable credential.
	opts := tpmstore.CredentialOptions{
		CredProtect: r.credProtect,
		HMACSecret:  r.hmacSecret,
		Resident:    rk,
	}
	if opts.CredProtect == 0 {
		opts.CredProtect = tpmstore.CredProtectUVOptional
	}
	cred, err := a.cfg.Store.CreateCredential(hash, opts)
	if err != nil {
		return nil, fmt.Errorf("ctap2: makeCredential: create: %w", err)
	}
	// Extension outputs: exactly what was asked and processed.
	var extOut []byte
	if r.credProtect != 0 || r.hmacSecret {
		ext := map[string]any{}
		if r.credProtect != 0 {
			ext["credProtect"] = r.credProtect
		}
		if r.hmacSecret {
			ext["hmac-secret"] = true
		}
		if extOut, err = ctap.EncodeCBOR(ext); err != nil {
			return nil, err
		}
	}
	counter, err := a.cfg.Store.NextCounter()
	if err != nil {
		return nil, fmt.Errorf("ctap2: makeCredential: counter: %w", err)
	}
	flags := byte(flagUP)
	if uv {
		flags |= flagUV
	}
	ad, err := authData{
		rpIDHash: hash, flags: flags, counter: counter,
		credID: cred.ID, pub: cred.PublicKey, extensions: extOut,
	}.encode()
	if err != nil {
		return nil, fmt.Errorf("ctap2: makeCredential: authData: %w", err)
	}
	st, err := attestation.PackedSelf(ad, r.clientDataHash, func(d []byte) ([]byte, error) {
		return a.signDigest(cred, d, uv)
	})
	if err != nil {
		return nil, fmt.Errorf("ctap2: makeCredential: %w", err)
	}
	// Stored last: a resident credential replaces any older one for the
	// same RP and user, so nothing that can still fail may come after it.
	if rk {
		res := tpmstore.Resident{
			CredentialID: cred.ID,
			RPID:         r.rpID,
			RPIDHash:     hash,
			RPName:       truncateUTF8(r.rpName, maxNameLength),
			User: tpmstore.User{
				ID:          r.user.ID,
				Name:        truncateUTF8(r.user.Name, maxNameLength),
				DisplayName: truncateUTF8(r.user.DisplayName, maxNameLength),
			},
			PublicKey:   cred.PublicKey,
			CredProtect: opts.CredProtect,
			Created:     a.cfg.Now(),
		}
		if err := a.cfg.Store.PutResident(res); err != nil {
			if errors.Is(err, tpmstore.ErrStoreFull) {
				return nil, ctap.StatusKeyStoreFull
			}
			return nil, fmt.Errorf("ctap2: makeCredential: store resident: %w", err)
		}
	}
	return ctap.EncodeCBOR(map[int]any{
		0x01: attestation.FormatPacked,
		0x02: ad,
		0x03: st,
	})
}

// replacesResident reports whether a discoverable credential for the same
// RP and user ID exists, which a new one overwrites (§6.1.2 step 17).
func (a *Authenticator) replacesResident(hash [32]byte, userID []byte) bool {
	_, err := a.cfg.Store.ResidentByUser(hash, userID)
	return err == nil
}
