package ctap2

import (
	"errors"
	"fmt"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/cose"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2/pinuv"
	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// authenticatorClientPIN subcommands (CTAP 2.1 §6.5.5).
const (
	cpGetPINRetries              = 0x01
	cpGetKeyAgreement            = 0x02
	cpSetPIN                     = 0x03
	cpChangePIN                  = 0x04
	cpGetPINToken                = 0x05
	cpGetTokenUsingUVWithPerms   = 0x06
	cpGetUVRetries               = 0x07
	cpGetTokenUsingPINWithPerms  = 0x09
	cpPaddedPINLength            = 64
	cpPINHashLength              = pinuv.PINHashSize
	cpSupportedPermissions       = pinuv.PermMakeCredential | pinuv.PermGetAssertion | pinuv.PermCredentialManagement
	cpLegacyTokenPermissions     = pinuv.PermMakeCredential | pinuv.PermGetAssertion | pinuv.PermCredentialManagementPreview
	cpUnsupportedPermissionsMask = ^cpSupportedPermissions
)

// cpRequest is the authenticatorClientPIN parameter map.
type cpRequest struct {
	Protocol       *uint64   `cbor:"1,keyasint"`
	SubCommand     *uint64   `cbor:"2,keyasint"`
	KeyAgreement   *cose.Key `cbor:"3,keyasint"`
	PinUvAuthParam []byte    `cbor:"4,keyasint"`
	NewPinEnc      []byte    `cbor:"5,keyasint"`
	PinHashEnc     []byte    `cbor:"6,keyasint"`
	Permissions    *uint64   `cbor:"9,keyasint"`
	RPID           *string   `cbor:"10,keyasint"`
}

// cpResponse is the authenticatorClientPIN response map.
type cpResponse struct {
	KeyAgreement    *cose.Key `cbor:"1,keyasint,omitempty"`
	PinUvAuthToken  []byte    `cbor:"2,keyasint,omitempty"`
	PINRetries      *int      `cbor:"3,keyasint,omitempty"`
	PowerCycleState *bool     `cbor:"4,keyasint,omitempty"`
}

// clientPIN handles authenticatorClientPIN (CTAP 2.1 §6.5). raw is the
// CBOR parameter map; the result is the CBOR response map.
func (a *Authenticator) clientPIN(raw []byte) ([]byte, error) {
	var req cpRequest
	if err := decodeRequest(raw, &req); err != nil {
		return nil, err
	}
	if req.SubCommand == nil {
		return nil, ctap.StatusMissingParameter
	}
	switch *req.SubCommand {
	case cpGetPINRetries:
		return a.cpGetPINRetries()
	case cpGetKeyAgreement:
		return a.cpGetKeyAgreement(&req)
	case cpSetPIN:
		return a.cpSetPIN(&req)
	case cpChangePIN:
		return a.cpChangePIN(&req)
	case cpGetPINToken, cpGetTokenUsingPINWithPerms:
		return a.cpGetToken(&req)
	case cpGetTokenUsingUVWithPerms, cpGetUVRetries:
		// No built-in user verification: UV is only through PIN tokens.
		return nil, ctap.StatusInvalidSubcommand
	}
	return nil, ctap.StatusInvalidSubcommand
}

// cpProtocol returns the request's PIN/UV auth protocol: missing is
// MISSING_PARAMETER, unsupported INVALID_PARAMETER.
func (a *Authenticator) cpProtocol(req *cpRequest) (pinuv.Protocol, error) {
	if req.Protocol == nil {
		return nil, ctap.StatusMissingParameter
	}
	return a.pin.Protocol(*req.Protocol)
}

// getPINRetries (§6.5.5.2).
func (a *Authenticator) cpGetPINRetries() ([]byte, error) {
	retries := a.cfg.Store.PINRetries()
	pc := a.pin.PowerCycleRequired() && a.cfg.Store.PINIsSet()
	return ctap.EncodeCBOR(cpResponse{PINRetries: &retries, PowerCycleState: &pc})
}

// getKeyAgreement (§6.5.5.4).
func (a *Authenticator) cpGetKeyAgreement(req *cpRequest) ([]byte, error) {
	p, err := a.cpProtocol(req)
	if err != nil {
		return nil, err
	}
	k, err := a.pin.KeyAgreement(p.Version())
	if err != nil {
		return nil, err
	}
	return ctap.EncodeCBOR(cpResponse{KeyAgreement: &k})
}

// cpSharedSecret runs the platform's key agreement; a bad point is
// INVALID_PARAMETER.
func cpSharedSecret(p pinuv.Protocol, k *cose.Key) ([]byte, error) {
	ss, err := p.SharedSecret(*k)
	if err != nil {
		if ctap.StatusOf(err) == ctap.StatusOther {
			return nil, fmt.Errorf("%w: %w", ctap.StatusInvalidParameter, err)
		}
		return nil, err
	}
	return ss, nil
}

// cpDecryptPIN decrypts newPinEnc, strips its zero padding and applies
// the PIN policy (pinuv.CheckPIN, §6.5.5.5).
func cpDecryptPIN(p pinuv.Protocol, shared, newPinEnc []byte) ([]byte, error) {
	padded, err := p.Decrypt(shared, newPinEnc)
	if err != nil {
		return nil, fmt.Errorf("%w: newPinEnc: %w", ctap.StatusPINAuthInvalid, err)
	}
	if len(padded) < cpPaddedPINLength {
		return nil, fmt.Errorf("%w: padded PIN of %d bytes", ctap.StatusInvalidParameter, len(padded))
	}
	n := len(padded)
	for n > 0 && padded[n-1] == 0 {
		n--
	}
	pin := padded[:n]
	if err := pinuv.CheckPIN(pin); err != nil {
		return nil, err // CTAP2_ERR_PIN_POLICY_VIOLATION
	}
	return pin, nil
}

// cpDecryptPINHash decrypts pinHashEnc, which must hold exactly 16 bytes.
func cpDecryptPINHash(p pinuv.Protocol, shared, pinHashEnc []byte) ([cpPINHashLength]byte, error) {
	var h [cpPINHashLength]byte
	dec, err := p.Decrypt(shared, pinHashEnc)
	if err != nil {
		return h, err
	}
	if len(dec) != cpPINHashLength {
		return h, fmt.Errorf("%w: pinHashEnc holds %d bytes", ctap.StatusInvalidParameter, len(dec))
	}
	copy(h[:], dec)
	return h, nil
}

// cpPINGate refuses PIN checks that cannot succeed: no PIN, no retries,
// or blocked until a power cycle.
func (a *Authenticator) cpPINGate() error {
	if !a.cfg.Store.PINIsSet() {
		return ctap.StatusPINNotSet
	}
	if a.cfg.Store.PINRetries() <= 0 {
		return ctap.StatusPINBlocked
	}
	if a.pin.PowerCycleRequired() {
		return ctap.StatusPINAuthBlocked
	}
	return nil
}

// cpVerifyPIN checks the current PIN hash with the store. A wrong PIN
// regenerates the key-agreement key (§6.5.5.6 step "regenerate") and
// maps the store's error to the CTAP status.
func (a *Authenticator) cpVerifyPIN(h [cpPINHashLength]byte) error {
	return a.cpPINResult(a.cfg.Store.VerifyPIN(h))
}

func (a *Authenticator) cpPINResult(err error) error {
	if err == nil {
		return nil
	}
	var st ctap.Status
	switch {
	case errors.Is(err, tpmstore.ErrPINInvalid):
		st = ctap.StatusPINInvalid
	case errors.Is(err, tpmstore.ErrPINAuthBlocked):
		a.pin.NotePINAuthBlocked()
		st = ctap.StatusPINAuthBlocked
	case errors.Is(err, tpmstore.ErrPINBlocked):
		st = ctap.StatusPINBlocked
	case errors.Is(err, tpmstore.ErrPINNotSet):
		return fmt.Errorf("%w: %w", ctap.StatusPINNotSet, err)
	case errors.Is(err, tpmstore.ErrTPMLockout):
		// The PIN was not tried, so that a wrong one cannot put the
		// machine's TPM into dictionary-attack lockout (or it is in
		// lockout): blocked for now, no retry spent. A restart does not
		// help, only time, so powerCycleState stays false.
		a.log.Warn("PIN not tried: the TPM's dictionary-attack protection is (almost) in lockout", "err", err)
		return fmt.Errorf("%w: %w", ctap.StatusPINAuthBlocked, err)
	default:
		return fmt.Errorf("clientPIN: store: %w", err)
	}
	if rerr := a.pin.Regenerate(); rerr != nil {
		return fmt.Errorf("clientPIN: %w", rerr)
	}
	return fmt.Errorf("%w: %w", st, err)
}

// setPIN (§6.5.5.5).
func (a *Authenticator) cpSetPIN(req *cpRequest) ([]byte, error) {
	if req.KeyAgreement == nil || req.PinUvAuthParam == nil || req.NewPinEnc == nil {
		return nil, ctap.StatusMissingParameter
	}
	p, err := a.cpProtocol(req)
	if err != nil {
		return nil, err
	}
	if a.cfg.Store.PINIsSet() {
		return nil, ctap.StatusPINAuthInvalid
	}
	shared, err := cpSharedSecret(p, req.KeyAgreement)
	if err != nil {
		return nil, err
	}
	if !p.Verify(shared, req.NewPinEnc, req.PinUvAuthParam) {
		return nil, ctap.StatusPINAuthInvalid
	}
	pin, err := cpDecryptPIN(p, shared, req.NewPinEnc)
	if err != nil {
		return nil, err
	}
	if err := a.cfg.Store.SetPIN(pinuv.PINHash(pin)); err != nil {
		if errors.Is(err, tpmstore.ErrPINAlreadySet) {
			return nil, fmt.Errorf("%w: %w", ctap.StatusPINAuthInvalid, err)
		}
		return nil, fmt.Errorf("clientPIN: setting PIN: %w", err)
	}
	a.pin.ClearPINAuthBlocked() // a new PIN (first, or after a reset)
	a.log.Info("PIN set")
	return nil, nil
}

// changePIN (§6.5.5.6).
func (a *Authenticator) cpChangePIN(req *cpRequest) ([]byte, error) {
	if req.KeyAgreement == nil || req.PinUvAuthParam == nil || req.NewPinEnc == nil || req.PinHashEnc == nil {
		return nil, ctap.StatusMissingParameter
	}
	p, err := a.cpProtocol(req)
	if err != nil {
		return nil, err
	}
	if err := a.cpPINGate(); err != nil {
		return nil, err
	}
	shared, err := cpSharedSecret(p, req.KeyAgreement)
	if err != nil {
		return nil, err
	}
	msg := append(append([]byte(nil), req.NewPinEnc...), req.PinHashEnc...)
	if !p.Verify(shared, msg, req.PinUvAuthParam) {
		return nil, ctap.StatusPINAuthInvalid
	}
	current, err := cpDecryptPINHash(p, shared, req.PinHashEnc)
	if err != nil {
		return nil, err
	}
	pin, perr := cpDecryptPIN(p, shared, req.NewPinEnc)
	if perr != nil {
		// The current PIN is checked first, as the spec orders it: a wrong
		// current PIN counts and is reported even if the new one is bad.
		if err := a.cpVerifyPIN(current); err != nil {
			return nil, err
		}
		return nil, perr
	}
	if err := a.cpPINResult(a.cfg.Store.ChangePIN(current, pinuv.PINHash(pin))); err != nil {
		return nil, err
	}
	a.pin.ResetToken()
	a.log.Info("PIN changed")
	return nil, nil
}

// getPinToken (§6.5.5.7.1, legacy: mc and ga, no RP) and
// getPinUvAuthTokenUsingPinWithPermissions (§6.5.5.7.2). A legacy token
// is also good for the prototype credentialManagement command 0x41, and
// a token with cm for both 0x0A and 0x41; 0x0A needs cm (see
// docs/ctap2.md, "Legacy PIN tokens").
func (a *Authenticator) cpGetToken(req *cpRequest) ([]byte, error) {
	if req.KeyAgreement == nil || req.PinHashEnc == nil {
		return nil, ctap.StatusMissingParameter
	}
	withPerms := *req.SubCommand == cpGetTokenUsingPINWithPerms
	if withPerms && req.Permissions == nil {
		return nil, ctap.StatusMissingParameter
	}
	p, err := a.cpProtocol(req)
	if err != nil {
		return nil, err
	}
	perms := cpLegacyTokenPermissions
	rpID := ""
	if withPerms {
		if *req.Permissions == 0 || *req.Permissions > 0xFF {
			return nil, ctap.StatusInvalidParameter
		}
		perms = pinuv.Permission(*req.Permissions)
		if perms&cpUnsupportedPermissionsMask != 0 {
			return nil, ctap.StatusUnauthorizedPermission
		}
		if perms&pinuv.PermCredentialManagement != 0 {
			perms |= pinuv.PermCredentialManagementPreview
		}
		if req.RPID != nil {
			rpID = *req.RPID
		}
	} else if req.Permissions != nil || req.RPID != nil {
		return nil, ctap.StatusInvalidParameter
	}
	if err := a.cpPINGate(); err != nil {
		return nil, err
	}
	shared, err := cpSharedSecret(p, req.KeyAgreement)
	if err != nil {
		return nil, err
	}
	h, err := cpDecryptPINHash(p, shared, req.PinHashEnc)
	if err != nil {
		return nil, err
	}
	if err := a.cpVerifyPIN(h); err != nil {
		return nil, err
	}
	// The PIN hash the TPM just verified stays with the token: PIN-bound
	// (credProtect 3) keys sign only with it.
	tok := a.pin.IssueTokenWithSecret(perms, rpID, h[:])
	if tok == nil {
		return nil, errors.New("clientPIN: could not issue a token (random source failed)")
	}
	enc, err := p.Encrypt(shared, tok)
	clear(tok)
	if err != nil {
		return nil, fmt.Errorf("clientPIN: encrypting token: %w", err)
	}
	return ctap.EncodeCBOR(cpResponse{PinUvAuthToken: enc})
}
