package ctap2

import (
	"bytes"
	"errors"
	"fmt"

	"github.com/fxamacker/cbor/v2"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/cose"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2/pinuv"
	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// authenticatorCredentialManagement subcommands (CTAP 2.1 §6.8).
const (
	cmGetCredsMetadata          = 0x01
	cmEnumerateRPsBegin         = 0x02
	cmEnumerateRPsGetNextRP     = 0x03
	cmEnumerateCredentialsBegin = 0x04
	cmEnumerateCredentialsNext  = 0x05
	cmDeleteCredential          = 0x06
	cmUpdateUserInformation     = 0x07
)

// cmRequest is the authenticatorCredentialManagement parameter map. The
// subCommandParams are kept as sent: pinUvAuthParam is computed over
// their bytes.
type cmRequest struct {
	SubCommand     *uint64         `cbor:"1,keyasint"`
	Params         cbor.RawMessage `cbor:"2,keyasint"`
	Protocol       *uint64         `cbor:"3,keyasint"`
	PinUvAuthParam []byte          `cbor:"4,keyasint"`
}

// cmParams is subCommandParams.
type cmParams struct {
	RPIDHash     []byte        `cbor:"1,keyasint"`
	CredentialID *cmCredential `cbor:"2,keyasint"`
	User         *cmUser       `cbor:"3,keyasint"`
}

// cmCredential is a PublicKeyCredentialDescriptor.
type cmCredential struct {
	Type string `cbor:"type"`
	ID   []byte `cbor:"id"`
}

// cmUser is a PublicKeyCredentialUserEntity.
type cmUser struct {
	ID          []byte `cbor:"id"`
	Name        string `cbor:"name,omitempty"`
	DisplayName string `cbor:"displayName,omitempty"`
}

// cmRP is a PublicKeyCredentialRpEntity.
type cmRP struct {
	ID   string `cbor:"id"`
	Name string `cbor:"name,omitempty"`
}

// cmResponse is the authenticatorCredentialManagement response map.
type cmResponse struct {
	Existing         *int          `cbor:"1,keyasint,omitempty"`
	Remaining        *int          `cbor:"2,keyasint,omitempty"`
	RP               *cmRP         `cbor:"3,keyasint,omitempty"`
	RPIDHash         []byte        `cbor:"4,keyasint,omitempty"`
	TotalRPs         *int          `cbor:"5,keyasint,omitempty"`
	User             *cmUser       `cbor:"6,keyasint,omitempty"`
	CredentialID     *cmCredential `cbor:"7,keyasint,omitempty"`
	PublicKey        *cose.Key     `cbor:"8,keyasint,omitempty"`
	TotalCredentials *int          `cbor:"9,keyasint,omitempty"`
	CredProtect      *uint8        `cbor:"10,keyasint,omitempty"`
	LargeBlobKey     []byte        `cbor:"11,keyasint,omitempty"`
}

// credMgmtState is what enumerateRPsGetNextRP and
// enumerateCredentialsGetNextCredential continue from: a cursor after
// the last entry returned and how many of the announced total are still
// due, never the entries themselves, so an enumeration costs the same
// per step at 10 or 10,000 credentials. Any command other than
// credentialManagement, and any other credentialManagement subcommand,
// clears it.
type credMgmtState struct {
	rps      *cmWalk // enumerateRPs in progress
	creds    *cmWalk // enumerateCredentials in progress
	rpIDHash [32]byte
}

// cmWalk is one enumeration's position.
type cmWalk struct {
	after     tpmstore.Cursor
	remaining int // of the total announced by the Begin subcommand
}

// credentialManagement handles authenticatorCredentialManagement
// (CTAP 2.1 §6.8), also reached as the prototype command 0x41 (preview).
// The token must have cm; on 0x41, a token from the legacy getPinToken
// does too (pinuv.PermCredentialManagementPreview).
func (a *Authenticator) credentialManagement(raw []byte, preview bool) ([]byte, error) {
	var req cmRequest
	if err := decodeRequest(raw, &req); err != nil {
		a.cm = credMgmtState{}
		return nil, err
	}
	if req.SubCommand == nil {
		a.cm = credMgmtState{}
		return nil, ctap.StatusMissingParameter
	}
	sub := *req.SubCommand
	switch sub {
	case cmEnumerateRPsGetNextRP:
		return a.cmNextRP()
	case cmEnumerateCredentialsNext:
		return a.cmNextCredential()
	}
	a.cm = credMgmtState{}
	var params cmParams
	if len(req.Params) > 0 {
		if err := decodeRequest(req.Params, &params); err != nil {
			return nil, err
		}
	}
	switch sub {
	case cmGetCredsMetadata, cmEnumerateRPsBegin, cmEnumerateCredentialsBegin,
		cmDeleteCredential, cmUpdateUserInformation:
	default:
		return nil, ctap.StatusInvalidSubcommand
	}
	// §6.8 steps 2–4: a token authenticates subCommand ‖ subCommandParams.
	if req.PinUvAuthParam == nil {
		return nil, ctap.StatusPUATRequired
	}
	if req.Protocol == nil {
		return nil, ctap.StatusMissingParameter
	}
	msg := []byte{byte(sub)}
	if sub != cmGetCredsMetadata && sub != cmEnumerateRPsBegin {
		msg = append(msg, req.Params...)
	}
	if err := a.pin.VerifyParam(*req.Protocol, msg, req.PinUvAuthParam); err != nil {
		return nil, err
	}
	perm := pinuv.PermCredentialManagement
	if preview {
		perm = pinuv.PermCredentialManagementPreview
	}
	switch sub {
	case cmGetCredsMetadata:
		return a.cmMetadata(perm)
	case cmEnumerateRPsBegin:
		return a.cmBeginRPs(perm)
	case cmEnumerateCredentialsBegin:
		return a.cmBeginCredentials(perm, &params)
	case cmDeleteCredential:
		return a.cmDelete(perm, &params)
	default: // cmUpdateUserInformation
		return a.cmUpdateUser(perm, &params)
	}
}

// getCredsMetadata (§6.8.2).
func (a *Authenticator) cmMetadata(perm pinuv.Permission) ([]byte, error) {
	if err := a.pin.AuthorizeUnbound(perm); err != nil {
		return nil, err
	}
	n, err := a.cfg.Store.ResidentCount()
	if err != nil {
		return nil, fmt.Errorf("credentialManagement: counting residents: %w", err)
	}
	remaining := max(a.cfg.Store.MaxResidents()-n, 0)
	return ctap.EncodeCBOR(cmResponse{Existing: &n, Remaining: &remaining})
}

// enumerateRPsBegin (§6.8.3).
func (a *Authenticator) cmBeginRPs(perm pinuv.Permission) ([]byte, error) {
	if err := a.pin.AuthorizeUnbound(perm); err != nil {
		return nil, err
	}
	total, err := a.cfg.Store.ResidentRPCount()
	if err != nil {
		return nil, fmt.Errorf("credentialManagement: counting RPs: %w", err)
	}
	rps, next, err := a.cfg.Store.ListResidentRPs(nil, 1)
	if err != nil {
		return nil, fmt.Errorf("credentialManagement: listing RPs: %w", err)
	}
	if total == 0 || len(rps) == 0 {
		return nil, ctap.StatusNoCredentials
	}
	a.cm.rps = &cmWalk{after: next, remaining: total - 1}
	return cmEncodeRP(rps[0], &total)
}

// enumerateRPsGetNextRP (§6.8.3).
func (a *Authenticator) cmNextRP() ([]byte, error) {
	w := a.cm.rps
	a.cm.creds = nil
	list := func(after tpmstore.Cursor) ([]tpmstore.RP, tpmstore.Cursor, error) {
		return a.cfg.Store.ListResidentRPs(after, 1)
	}
	return cmStep(a, w, list, "RPs", cmEncodeRP)
}

// cmStep answers the next entry of walk w: list gives the entry after a
// cursor and the cursor after it, encode the answer. No walk, a walk
// whose announced total is reached, or one that finds no more entries
// is CTAP2_ERR_NOT_ALLOWED; those and a store failure end every walk.
func cmStep[T any](a *Authenticator, w *cmWalk, list func(tpmstore.Cursor) ([]T, tpmstore.Cursor, error), what string, encode func(T, *int) ([]byte, error)) ([]byte, error) {
	if w == nil || w.remaining <= 0 {
		a.cm = credMgmtState{}
		return nil, ctap.StatusNotAllowed
	}
	entries, next, err := list(w.after)
	if err != nil {
		a.cm = credMgmtState{}
		return nil, fmt.Errorf("credentialManagement: listing %s: %w", what, err)
	}
	if len(entries) == 0 {
		a.cm = credMgmtState{}
		return nil, ctap.StatusNotAllowed
	}
	w.after, w.remaining = next, w.remaining-1
	return encode(entries[0], nil)
}

func cmEncodeRP(rp tpmstore.RP, total *int) ([]byte, error) {
	return ctap.EncodeCBOR(cmResponse{
		RP:       &cmRP{ID: rp.ID, Name: rp.Name},
		RPIDHash: rp.Hash[:],
		TotalRPs: total,
	})
}

// enumerateCredentialsBegin (§6.8.4). A token bound to an RP may only
// enumerate that RP's credentials.
func (a *Authenticator) cmBeginCredentials(perm pinuv.Permission, params *cmParams) ([]byte, error) {
	if params.RPIDHash == nil {
		return nil, ctap.StatusMissingParameter
	}
	if len(params.RPIDHash) != 32 {
		return nil, ctap.StatusInvalidParameter
	}
	if err := a.pin.AuthorizeRPIDHash(perm, params.RPIDHash); err != nil {
		return nil, err
	}
	hash := [32]byte(params.RPIDHash)
	rp, err := a.cfg.Store.ResidentRP(hash)
	if errors.Is(err, tpmstore.ErrNotFound) {
		return nil, ctap.StatusNoCredentials
	}
	if err != nil {
		return nil, fmt.Errorf("credentialManagement: RP: %w", err)
	}
	creds, next, err := a.cfg.Store.ListResidents(hash, tpmstore.AllResidents, nil, 1)
	if err != nil {
		return nil, fmt.Errorf("credentialManagement: listing credentials: %w", err)
	}
	if len(creds) == 0 {
		return nil, ctap.StatusNoCredentials
	}
	total := rp.Count
	a.cm.rpIDHash = hash
	a.cm.creds = &cmWalk{after: next, remaining: total - 1}
	return cmEncodeCredential(creds[0], &total)
}

// enumerateCredentialsGetNextCredential (§6.8.4).
func (a *Authenticator) cmNextCredential() ([]byte, error) {
	w := a.cm.creds
	a.cm.rps = nil
	list := func(after tpmstore.Cursor) ([]tpmstore.Resident, tpmstore.Cursor, error) {
		return a.cfg.Store.ListResidents(a.cm.rpIDHash, tpmstore.AllResidents, after, 1)
	}
	return cmStep(a, w, list, "credentials", cmEncodeCredential)
}

func cmEncodeCredential(r tpmstore.Resident, total *int) ([]byte, error) {
	if r.PublicKey == nil {
		return nil, errors.New("credentialManagement: resident credential without public key")
	}
	pk, err := cose.ES256(r.PublicKey)
	if err != nil {
		return nil, fmt.Errorf("credentialManagement: public key: %w", err)
	}
	cp := max(r.CredProtect, tpmstore.CredProtectUVOptional)
	resp := cmResponse{
		User:             &cmUser{ID: r.User.ID, Name: r.User.Name, DisplayName: r.User.DisplayName},
		CredentialID:     &cmCredential{Type: "public-key", ID: r.CredentialID},
		PublicKey:        &pk,
		TotalCredentials: total,
		CredProtect:      &cp,
	}
	if len(r.LargeBlobKey) > 0 {
		resp.LargeBlobKey = r.LargeBlobKey
	}
	if resp.User.ID == nil {
		resp.User.ID = []byte{}
	}
	return ctap.EncodeCBOR(resp)
}

// cmFind looks up a resident credential by ID (one read).
func (a *Authenticator) cmFind(id []byte) (tpmstore.Resident, error) {
	r, err := a.cfg.Store.Resident(id)
	if errors.Is(err, tpmstore.ErrNotFound) {
		return tpmstore.Resident{}, ctap.StatusNoCredentials
	}
	if err != nil {
		return tpmstore.Resident{}, fmt.Errorf("credentialManagement: finding the credential: %w", err)
	}
	return r, nil
}

// cmAuthorizedCredential checks the cm permission, finds the credential
// and checks the token's RP binding against it.
func (a *Authenticator) cmAuthorizedCredential(perm pinuv.Permission, cred *cmCredential) (tpmstore.Resident, error) {
	if cred == nil {
		return tpmstore.Resident{}, ctap.StatusMissingParameter
	}
	if err := a.pin.AuthorizeRPIDHash(perm, nil); err != nil {
		return tpmstore.Resident{}, err
	}
	r, err := a.cmFind(cred.ID)
	if err != nil {
		return tpmstore.Resident{}, err
	}
	if err := a.pin.AuthorizeRPIDHash(perm, r.RPIDHash[:]); err != nil {
		return tpmstore.Resident{}, err
	}
	return r, nil
}

// deleteCredential (§6.8.5).
func (a *Authenticator) cmDelete(perm pinuv.Permission, params *cmParams) ([]byte, error) {
	r, err := a.cmAuthorizedCredential(perm, params.CredentialID)
	if err != nil {
		return nil, err
	}
	if err := a.cfg.Store.DeleteResident(r.CredentialID); err != nil {
		if errors.Is(err, tpmstore.ErrNotFound) {
			return nil, fmt.Errorf("%w: %w", ctap.StatusNoCredentials, err)
		}
		return nil, fmt.Errorf("credentialManagement: deleting: %w", err)
	}
	a.log.Info("resident credential deleted", "rp", r.RPID)
	return nil, nil
}

// updateUserInformation (§6.8.6): the user ID must match; name and
// displayName are replaced (absent ones removed).
func (a *Authenticator) cmUpdateUser(perm pinuv.Permission, params *cmParams) ([]byte, error) {
	if params.CredentialID == nil || params.User == nil {
		return nil, ctap.StatusMissingParameter
	}
	r, err := a.cmAuthorizedCredential(perm, params.CredentialID)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(r.User.ID, params.User.ID) {
		return nil, ctap.StatusInvalidParameter
	}
	// Cut like makeCredential does, so stored names cannot push later
	// answers past the response size limit.
	u := tpmstore.User{
		ID:          r.User.ID,
		Name:        truncateUTF8(params.User.Name, maxNameLength),
		DisplayName: truncateUTF8(params.User.DisplayName, maxNameLength),
	}
	if err := a.cfg.Store.UpdateResidentUser(r.CredentialID, u); err != nil {
		if errors.Is(err, tpmstore.ErrNotFound) {
			return nil, fmt.Errorf("%w: %w", ctap.StatusNoCredentials, err)
		}
		return nil, fmt.Errorf("credentialManagement: updating user: %w", err)
	}
	return nil, nil
}
