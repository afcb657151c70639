package ctap2

import "github.com/tpm-fido/tpm-fido/tpmstore"

// Store is what the CTAP2 layer needs from the key store. *tpmstore.Store
// implements it; tests may use a software fake.
type Store interface {
	CreateCredential(rpIDHash [32]byte, opts tpmstore.CredentialOptions) (*tpmstore.Credential, error)
	// OpenCredential checks a credential ID for rpIDHash in software.
	OpenCredential(rpIDHash [32]byte, id []byte) (*tpmstore.Credential, error)
	// Sign returns an ASN.1 DER ECDSA signature over a SHA-256 digest.
	Sign(c *tpmstore.Credential, digest []byte) ([]byte, error)
	// CredRandom returns the 32-byte hmac-secret CredRandom for c.
	CredRandom(c *tpmstore.Credential, uv bool) ([]byte, error)
	NextCounter() (uint32, error)

	PutResident(r tpmstore.Resident) error
	Residents(rpIDHash [32]byte) ([]tpmstore.Resident, error) // newest first
	ResidentRPs() ([]tpmstore.RP, error)
	DeleteResident(credID []byte) error
	UpdateResidentUser(credID []byte, u tpmstore.User) error
	ResidentCount() (int, error)
	MaxResidents() int

	PINIsSet() bool
	SetPIN(pinHash [16]byte) error
	ChangePIN(current, next [16]byte) error
	VerifyPIN(pinHash [16]byte) error
	PINRetries() int
	Reset() error
}
