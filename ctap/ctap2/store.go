package ctap2

import "github.com/tpm-fido/tpm-fido/tpmstore"

// Store is what the CTAP2 layer needs from the key store. *tpmstore.Store
// implements it; tests may use a software fake.
type Store interface {
	CreateCredential(rpIDHash [32]byte, opts tpmstore.CredentialOptions) (*tpmstore.Credential, error)
	// OpenCredential checks a credential ID for rpIDHash in software.
	OpenCredential(rpIDHash [32]byte, id []byte) (*tpmstore.Credential, error)
	// Sign returns an ASN.1 DER ECDSA signature over a SHA-256 digest.
	// A PIN-bound credential (c.PINBound: credProtect 3) gives
	// tpmstore.ErrPINRequired.
	Sign(c *tpmstore.Credential, digest []byte) ([]byte, error)
	// SignWithPIN is Sign for a user-verified request, with the PIN hash
	// the store verified when the pinUvAuthToken was issued: the TPM
	// uses a PIN-bound credential's key only with it.
	SignWithPIN(c *tpmstore.Credential, digest []byte, pinHash [16]byte) ([]byte, error)
	// CredRandom returns the 32-byte hmac-secret CredRandom for c.
	CredRandom(c *tpmstore.Credential, uv bool) ([]byte, error)
	NextCounter() (uint32, error)

	// Resident credentials. The protocol layer never loads a whole RP,
	// let alone every credential: it asks for kept counts and walks
	// cursors one entry at a time, so its cost does not grow with the
	// number stored (docs/tpmstore.md).

	// PutResident stores r, replacing the RP's credential for the same
	// user ID in the same transaction; tpmstore.ErrStoreFull when full.
	PutResident(r tpmstore.Resident) error
	// Resident returns the credential with this ID; tpmstore.ErrNotFound
	// if there is none.
	Resident(credID []byte) (tpmstore.Resident, error)
	// ResidentByUser returns the RP's credential for userID;
	// tpmstore.ErrNotFound if there is none.
	ResidentByUser(rpIDHash [32]byte, userID []byte) (tpmstore.Resident, error)
	// ResidentRP returns an RP with its kept counts; tpmstore.ErrNotFound
	// when it has no resident credentials.
	ResidentRP(rpIDHash [32]byte) (tpmstore.RP, error)
	// ListResidents returns up to limit of the RP's credentials passing
	// the filter, newest first, after the cursor (nil: from the newest),
	// and the cursor of the last one returned.
	ListResidents(rpIDHash [32]byte, f tpmstore.ResidentFilter, after tpmstore.Cursor, limit int) ([]tpmstore.Resident, tpmstore.Cursor, error)
	// ListResidentRPs returns up to limit RPs in ID order after the
	// cursor, and the cursor of the last one returned.
	ListResidentRPs(after tpmstore.Cursor, limit int) ([]tpmstore.RP, tpmstore.Cursor, error)
	DeleteResident(credID []byte) error
	UpdateResidentUser(credID []byte, u tpmstore.User) error
	ResidentCount() (int, error)
	ResidentRPCount() (int, error)
	MaxResidents() int

	PINIsSet() bool
	SetPIN(pinHash [16]byte) error
	ChangePIN(current, next [16]byte) error
	VerifyPIN(pinHash [16]byte) error
	PINRetries() int
	Reset() error
}
