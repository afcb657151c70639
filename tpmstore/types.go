package tpmstore

import (
	"crypto/ecdsa"
	"errors"
	"time"
)

// Errors returned by the Store. Callers match them with errors.Is.
var (
	// ErrCredentialInvalid: the credential ID was not made by this store
	// for this relying party (wrong RP, altered, made before a reset, or
	// made on another machine). Detected in software, no TPM command.
	ErrCredentialInvalid = errors.New("tpmstore: credential ID not valid here")
	// ErrNotFound: no resident credential with that ID.
	ErrNotFound = errors.New("tpmstore: no such resident credential")
	// ErrStoreFull: no room for another resident credential.
	ErrStoreFull = errors.New("tpmstore: resident credential storage full")
	// ErrPINNotSet: a PIN operation that needs a PIN, with none set.
	ErrPINNotSet = errors.New("tpmstore: no PIN set")
	// ErrPINAlreadySet: SetPIN when a PIN exists (use ChangePIN).
	ErrPINAlreadySet = errors.New("tpmstore: PIN already set")
	// ErrPINInvalid: wrong PIN; retries were decremented.
	ErrPINInvalid = errors.New("tpmstore: wrong PIN")
	// ErrPINAuthBlocked: three wrong PINs in a row; the daemon must be
	// restarted before the PIN can be tried again.
	ErrPINAuthBlocked = errors.New("tpmstore: PIN blocked until restart")
	// ErrPINBlocked: no retries left; only a reset helps.
	ErrPINBlocked = errors.New("tpmstore: PIN blocked, reset required")
	// ErrForeignTPM: the state directory was created under a different
	// TPM (or the TPM was cleared). The state is left untouched.
	ErrForeignTPM = errors.New("tpmstore: state was created under a different TPM")
	// ErrCorruptState: the state directory is damaged. Left untouched.
	ErrCorruptState = errors.New("tpmstore: state directory is corrupt")
	// ErrTPMLockout: the TPM's own dictionary-attack protection is in
	// lockout, so the PIN could not be checked. The PIN retries were not
	// consumed. It clears after the TPM's recovery time (or with
	// TPM2_DictionaryAttackLockReset by the lockout owner).
	ErrTPMLockout = errors.New("tpmstore: TPM is in dictionary-attack lockout; PIN not checked, wait for the TPM's recovery time")
	// ErrPINRequired: Sign of a PIN-bound credential; use SignWithPIN
	// with the PIN hash of a verified PIN.
	ErrPINRequired = errors.New("tpmstore: the credential's TPM key signs only with the PIN")
	// ErrCounterExhausted: the 32-bit signature counter has no values left.
	ErrCounterExhausted = errors.New("tpmstore: signature counter exhausted")
)

// CredProtect levels (CTAP 2.1 §12.1).
const (
	CredProtectUVOptional            uint8 = 1
	CredProtectUVOptionalWithCredIDs uint8 = 2
	CredProtectUVRequired            uint8 = 3
)

// CredentialOptions are fixed when a credential is created and sealed
// into its credential ID.
type CredentialOptions struct {
	CredProtect uint8 // 1..3; 0 means 1
	HMACSecret  bool  // hmac-secret was requested
	Resident    bool  // discoverable credential
}

// Credential is an opened credential: what its ID says, checked.
type Credential struct {
	ID        []byte
	RPIDHash  [32]byte
	PublicKey *ecdsa.PublicKey
	Options   CredentialOptions
	// PINBound: the TPM signs with this credential's key only with the
	// PIN (SignWithPIN); credProtect 3 credentials are made so.
	PINBound bool
	// private TPM blobs and nonce, unexported, set by the store
	priv credentialSecret
}

// User is a WebAuthn user entity.
type User struct {
	ID          []byte
	Name        string
	DisplayName string
}

// Resident is a discoverable credential as stored on disk.
type Resident struct {
	CredentialID []byte
	RPID         string
	RPIDHash     [32]byte
	RPName       string
	User         User
	PublicKey    *ecdsa.PublicKey
	CredProtect  uint8
	LargeBlobKey []byte // optional, 32 bytes when present
	Created      time.Time
}

// RP is a relying party with resident credentials.
type RP struct {
	ID    string
	Name  string // from the RP's newest credential
	Hash  [32]byte
	Count int // resident credentials
	// CountWithoutUV is how many of them a getAssertion without user
	// verification may discover (credProtect 1).
	CountWithoutUV int
}
