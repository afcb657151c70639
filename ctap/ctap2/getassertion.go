package ctap2

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"errors"
	"fmt"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/cose"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2/pinuv"
	"github.com/tpm-fido/tpm-fido/presence"
	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// getAssertion parameter keys (CTAP 2.1 §6.2).
const (
	gaRPID              = 0x01
	gaClientDataHash    = 0x02
	gaAllowList         = 0x03
	gaExtensions        = 0x04
	gaOptions           = 0x05
	gaPinUvAuthParam    = 0x06
	gaPinUvAuthProtocol = 0x07
)

// nextAssertionTimeout is how long getNextAssertion may follow the
// previous getAssertion or getNextAssertion (§6.3: 30 seconds).
const nextAssertionTimeout = 30 * time.Second

// hmacSecretInput is a parsed hmac-secret getAssertion input.
type hmacSecretInput struct {
	keyAgreement cose.Key
	saltEnc      []byte
	saltAuth     []byte
	protocol     uint64
}

type getAssertionRequest struct {
	rpID           string
	clientDataHash []byte
	allowList      []descriptor // an empty one is none (discovery)
	options        map[string]bool
	hmacSecret     *hmacSecretInput
	pua            pinUvAuth
}

// assertionCred is one applicable credential.
type assertionCred struct {
	cred *tpmstore.Credential
	// user is the user member of the response (§6.2.2, 0x04), for a
	// discoverable credential only: its id always, name and displayName
	// only when accountDetails allows them.
	user *tpmstore.User
}

// nextAssertion is what getNextAssertion continues from: a cursor in the
// RP's index after the credential last returned, and how many of the
// announced numberOfCredentials are still due. The credentials are read
// one per call, never listed up front.
type nextAssertion struct {
	rpIDHash       [32]byte
	clientDataHash []byte
	flags          byte
	uv             bool
	details        bool // user name and displayName in the answers
	hmac           *hmacSecretState
	filter         tpmstore.ResidentFilter
	after          tpmstore.Cursor
	remaining      int
	deadline       time.Time
}

// hmacSecretState is a verified hmac-secret request: the salts in clear
// and how to encrypt the output back to the platform.
type hmacSecretState struct {
	proto        pinuv.Protocol
	sharedSecret []byte
	salt1, salt2 []byte
}

func parseGetAssertion(raw []byte) (*getAssertionRequest, error) {
	p, err := parseParams(raw)
	if err != nil {
		return nil, err
	}
	r := &getAssertionRequest{options: map[string]bool{}}
	if r.rpID, err = need(p, gaRPID, asText); err != nil {
		return nil, err
	}
	if r.clientDataHash, err = need(p, gaClientDataHash, asBytes); err != nil {
		return nil, err
	}
	if _, err := opt(p, gaAllowList, parseDescriptors, &r.allowList); err != nil {
		return nil, err
	}
	var ext map[string]cbor.RawMessage
	if _, err := opt(p, gaExtensions, asTextMap, &ext); err != nil {
		return nil, err
	}
	if _, err := opt(ext, "hmac-secret", parseHMACSecretInput, &r.hmacSecret); err != nil {
		return nil, err
	}
	if _, err := opt(p, gaOptions, parseOptions, &r.options); err != nil {
		return nil, err
	}
	if r.pua, err = p.pinUvAuth(gaPinUvAuthParam, gaPinUvAuthProtocol); err != nil {
		return nil, err
	}
	return r, nil
}

// parseHMACSecretInput parses {1: keyAgreement, 2: saltEnc, 3: saltAuth,
// 4?: pinUvAuthProtocol} (CTAP 2.1 §12.5).
func parseHMACSecretInput(raw cbor.RawMessage) (*hmacSecretInput, error) {
	m, err := asIntMap(raw)
	if err != nil {
		return nil, err
	}
	if err := requireKeys(m, 1, 2, 3); err != nil {
		return nil, err
	}
	in := &hmacSecretInput{protocol: 1}
	if in.keyAgreement, err = parseCOSEKey(m[1]); err != nil {
		return nil, err
	}
	if in.saltEnc, err = asBytes(m[2]); err != nil {
		return nil, err
	}
	if in.saltAuth, err = asBytes(m[3]); err != nil {
		return nil, err
	}
	if _, err := opt(m, 4, asUint, &in.protocol); err != nil {
		return nil, err
	}
	return in, nil
}

// parseCOSEKey type-checks a platform key-agreement COSE_Key. Whether the
// point is on the curve is the PIN/UV protocol's check.
func parseCOSEKey(raw cbor.RawMessage) (cose.Key, error) {
	var k cose.Key
	m, err := asIntMap(raw)
	if err != nil {
		return k, err
	}
	if err := requireKeys(m, 1, 3, -1, -2, -3); err != nil {
		return k, err
	}
	if k.Kty, err = asInt(m[1]); err != nil {
		return k, err
	}
	if k.Alg, err = asInt(m[3]); err != nil {
		return k, err
	}
	if k.Crv, err = asInt(m[-1]); err != nil {
		return k, err
	}
	if k.X, err = asBytes(m[-2]); err != nil {
		return k, err
	}
	if k.Y, err = asBytes(m[-3]); err != nil {
		return k, err
	}
	if _, err := k.Point(); err != nil {
		return k, fmt.Errorf("%w: %w", ctap.StatusInvalidParameter, err)
	}
	return k, nil
}

// getAssertion handles authenticatorGetAssertion (CTAP 2.1 §6.2.2).
func (a *Authenticator) getAssertion(ctx context.Context, raw []byte) ([]byte, error) {
	r, err := parseGetAssertion(raw)
	if err != nil {
		return nil, err
	}
	prompt := presence.Request{Op: presence.OpAuthenticate, RPID: r.rpID, Challenge: r.clientDataHash}

	if err := a.checkPinUvAuthPrelude(ctx, r.pua, r.clientDataHash, prompt); err != nil {
		return nil, err
	}
	// Step 5: options. "rk" is not an option of getAssertion.
	if _, ok := r.options["rk"]; ok {
		return nil, ctap.StatusUnsupportedOption
	}
	up := true
	if v, ok := r.options["up"]; ok {
		up = v
	}
	if r.options["uv"] && !r.pua.present {
		return nil, ctap.StatusInvalidOption
	}
	// hmac-secret needs user presence (§12.5): up=false must not hand
	// out the secret without a touch.
	if r.hmacSecret != nil && !up {
		return nil, ctap.StatusUnsupportedOption
	}
	// Step 6: verify the token: ga permission, bound to this RP.
	uv := false
	if r.pua.present {
		if err := a.verifyPinUvAuth(r.pua, r.clientDataHash, pinuv.PermGetAssertion, r.rpID); err != nil {
			return nil, err
		}
		uv = true
	}
	// hmac-secret input is checked before anyone is asked to touch.
	var hs *hmacSecretState
	if r.hmacSecret != nil {
		if hs, err = a.openHMACSecret(r.hmacSecret); err != nil {
			return nil, err
		}
	}

	// Step 7: locate applicable credentials, applying credProtect (§12.1).
	hash := rpIDHash(r.rpID)
	var (
		first assertionCred
		n     int
		walk  *nextAssertion
	)
	if len(r.allowList) > 0 {
		if first, err = a.allowListCredential(r, hash, uv); err != nil {
			return nil, err
		}
		if first.cred != nil {
			n = 1
		}
	} else if first, n, walk, err = a.discoverCredential(hash, uv); err != nil {
		return nil, err
	}
	if n == 0 {
		return nil, ctap.StatusNoCredentials
	}
	details := accountDetails(uv, n)
	if !details {
		first.user = userIDOnly(first.user)
	}

	// Step 9: user presence, unless the platform asked up=false.
	var flags byte
	if up {
		if err := a.confirmPresence(ctx, prompt); err != nil {
			return nil, err
		}
		flags |= flagUP
	}
	if uv {
		flags |= flagUV
	}
	if r.pua.present && up {
		a.pin.ClearPermissionsExceptLBW()
	}

	resp, err := a.assertion(hash, r.clientDataHash, flags, uv, hs, first)
	if err != nil {
		return nil, err
	}
	if walk != nil && n > 1 {
		resp[0x05] = n
		walk.clientDataHash, walk.flags, walk.uv, walk.details, walk.hmac = r.clientDataHash, flags, uv, details, hs
		walk.remaining = n - 1
		walk.deadline = a.cfg.Now().Add(nextAssertionTimeout)
		a.next = walk
	}
	return ctap.EncodeCBOR(resp)
}

// getNextAssertion handles authenticatorGetNextAssertion (§6.3).
func (a *Authenticator) getNextAssertion(raw []byte) ([]byte, error) {
	if len(raw) != 0 {
		return nil, ctap.StatusInvalidLength
	}
	n := a.next
	if n == nil || n.remaining <= 0 || a.cfg.Now().After(n.deadline) {
		a.next = nil
		return nil, ctap.StatusNotAllowed
	}
	c, after, _, err := a.nextResident(n.rpIDHash, n.filter, n.after)
	if err != nil {
		a.next = nil
		return nil, err
	}
	if c.cred == nil { // deleted since: fewer than announced
		a.next = nil
		return nil, ctap.StatusNotAllowed
	}
	if !n.details {
		c.user = userIDOnly(c.user)
	}
	n.after, n.remaining = after, n.remaining-1
	n.deadline = a.cfg.Now().Add(nextAssertionTimeout)
	resp, err := a.assertion(n.rpIDHash, n.clientDataHash, n.flags, n.uv, n.hmac, c)
	if err != nil {
		a.next = nil
		return nil, err
	}
	return ctap.EncodeCBOR(resp)
}

// allowListCredential returns the first allowList entry this store made
// for the RP that the request may use (credProtect 3 needs UV), or none.
func (a *Authenticator) allowListCredential(r *getAssertionRequest, hash [32]byte, uv bool) (assertionCred, error) {
	for _, d := range r.allowList {
		c := a.listedCredential(hash, d, uv)
		if c == nil {
			continue
		}
		ac := assertionCred{cred: c}
		if c.Options.Resident {
			// A discoverable credential's user id is returned also when
			// the allowList named it (§6.2.2, 0x04): WebAuthn's
			// userHandle comes from it. One read by credential ID.
			res, err := a.cfg.Store.Resident(c.ID)
			switch {
			case err == nil:
				ac.user = &res.User
			case !errors.Is(err, tpmstore.ErrNotFound):
				return assertionCred{}, fmt.Errorf("ctap2: getAssertion: resident: %w", err)
			}
		}
		return ac, nil
	}
	return assertionCred{}, nil
}

// discoverFilter is which of an RP's discoverable credentials a request
// may use: all with UV, only credProtect 1 without (§12.1: level 2 needs
// an allowList, level 3 UV).
func discoverFilter(uv bool) tpmstore.ResidentFilter {
	if uv {
		return tpmstore.AllResidents
	}
	return tpmstore.ResidentsWithoutUV
}

// discoverCredential finds the newest discoverable credential of the RP
// the request may use, and numberOfCredentials from the RP's kept count
// (no credential beyond the first is read). walk continues after it.
func (a *Authenticator) discoverCredential(hash [32]byte, uv bool) (first assertionCred, n int, walk *nextAssertion, err error) {
	rp, err := a.cfg.Store.ResidentRP(hash)
	if errors.Is(err, tpmstore.ErrNotFound) {
		return assertionCred{}, 0, nil, nil
	}
	if err != nil {
		return assertionCred{}, 0, nil, fmt.Errorf("ctap2: getAssertion: residents: %w", err)
	}
	n = rp.Count
	if !uv {
		n = rp.CountWithoutUV
	}
	if n == 0 {
		return assertionCred{}, 0, nil, nil
	}
	filter := discoverFilter(uv)
	first, after, skipped, err := a.nextResident(hash, filter, nil)
	if err != nil || first.cred == nil {
		return assertionCred{}, 0, nil, err
	}
	return first, max(n-skipped, 1), &nextAssertion{rpIDHash: hash, filter: filter, after: after}, nil
}

// nextResident returns the RP's next discoverable credential after the
// cursor that opens, the cursor after it, and how many were skipped
// because they did not open (only a damaged record does not). cred is
// nil when none is left.
func (a *Authenticator) nextResident(hash [32]byte, f tpmstore.ResidentFilter, after tpmstore.Cursor) (c assertionCred, next tpmstore.Cursor, skipped int, err error) {
	for {
		rs, cur, err := a.cfg.Store.ListResidents(hash, f, after, 1)
		if err != nil {
			return assertionCred{}, nil, skipped, fmt.Errorf("ctap2: getAssertion: residents: %w", err)
		}
		if len(rs) == 0 {
			return assertionCred{}, after, skipped, nil
		}
		after = cur
		res := &rs[0]
		if cred := a.openCredential(hash, res.CredentialID); cred != nil {
			return assertionCred{cred: cred, user: &res.User}, after, skipped, nil
		}
		a.log.Warn("resident credential does not open; skipped", "rp", res.RPID)
		skipped++
	}
}

// accountDetails reports whether an assertion may carry the user's name
// and displayName (§6.2.2, 0x04): only when the user was verified and
// more than one account is returned, so that the platform can offer a
// choice. A single account gets its id alone.
func accountDetails(uv bool, numberOfCredentials int) bool {
	return uv && numberOfCredentials > 1
}

// userIDOnly returns u without name and displayName (nil stays nil).
func userIDOnly(u *tpmstore.User) *tpmstore.User {
	if u == nil {
		return nil
	}
	return &tpmstore.User{ID: u.ID}
}

// openHMACSecret verifies saltAuth and decrypts the salts (§12.5).
func (a *Authenticator) openHMACSecret(in *hmacSecretInput) (*hmacSecretState, error) {
	proto, err := a.pin.Protocol(in.protocol)
	if err != nil {
		return nil, ctap.StatusInvalidParameter
	}
	shared, err := proto.SharedSecret(in.keyAgreement)
	if err != nil {
		return nil, statusOr(err, ctap.StatusInvalidParameter)
	}
	if !proto.Verify(shared, in.saltEnc, in.saltAuth) {
		return nil, ctap.StatusPINAuthInvalid
	}
	salts, err := proto.Decrypt(shared, in.saltEnc)
	if err != nil {
		return nil, ctap.StatusInvalidLength
	}
	st := &hmacSecretState{proto: proto, sharedSecret: shared}
	switch len(salts) {
	case 32:
		st.salt1 = salts
	case 64:
		st.salt1, st.salt2 = salts[:32], salts[32:]
	default:
		return nil, ctap.StatusInvalidLength
	}
	return st, nil
}

// hmacSecretOutput computes encrypt(HMAC(CredRandom, salt1) [‖ HMAC(
// CredRandom, salt2)]) for c.
func (a *Authenticator) hmacSecretOutput(hs *hmacSecretState, c *tpmstore.Credential, uv bool) ([]byte, error) {
	cr, err := a.cfg.Store.CredRandom(c, uv)
	if err != nil {
		return nil, fmt.Errorf("ctap2: hmac-secret: CredRandom: %w", err)
	}
	mac := func(salt []byte) []byte {
		h := hmac.New(sha256.New, cr)
		h.Write(salt)
		return h.Sum(nil)
	}
	out := mac(hs.salt1)
	if hs.salt2 != nil {
		out = append(out, mac(hs.salt2)...)
	}
	enc, err := hs.proto.Encrypt(hs.sharedSecret, out)
	if err != nil {
		return nil, fmt.Errorf("ctap2: hmac-secret: encrypt: %w", err)
	}
	return enc, nil
}

// assertion builds one getAssertion response map for c.
func (a *Authenticator) assertion(hash [32]byte, clientDataHash []byte, flags byte, uv bool, hs *hmacSecretState, c assertionCred) (map[int]any, error) {
	var ext []byte
	if hs != nil && c.cred.Options.HMACSecret {
		out, err := a.hmacSecretOutput(hs, c.cred, uv)
		if err != nil {
			return nil, err
		}
		if ext, err = ctap.EncodeCBOR(map[string]any{"hmac-secret": out}); err != nil {
			return nil, err
		}
	}
	counter, err := a.cfg.Store.NextCounter()
	if err != nil {
		return nil, fmt.Errorf("ctap2: getAssertion: counter: %w", err)
	}
	ad, err := authData{rpIDHash: hash, flags: flags, counter: counter, extensions: ext}.encode()
	if err != nil {
		return nil, err
	}
	sig, err := a.signData(c.cred, ad, clientDataHash, uv)
	if err != nil {
		return nil, err
	}
	resp := map[int]any{
		0x01: map[string]any{"id": c.cred.ID, "type": credTypePublicKy},
		0x02: ad,
		0x03: sig,
	}
	if c.user != nil {
		id := c.user.ID
		if id == nil {
			id = []byte{}
		}
		u := map[string]any{"id": id}
		if c.user.Name != "" {
			u["name"] = c.user.Name
		}
		if c.user.DisplayName != "" {
			u["displayName"] = c.user.DisplayName
		}
		resp[0x04] = u
	}
	return resp, nil
}
