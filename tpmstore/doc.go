// Package tpmstore keeps every secret of the authenticator inside the
// TPM or sealed by it: credential keys, the credential-ID wrapping key,
// the hmac-secret key, the PIN check, plus the durable state around them
// (resident credentials, the signature counter, PIN retries). It knows
// nothing of CTAP.
//
// See docs/tpmstore.md for the design, the credential ID layout and the
// TPM command budget of each operation.
package tpmstore

// credentialSecret is what a credential ID carries under its AEAD and
// what the store needs to load the key into the TPM again.
type credentialSecret struct {
	version byte   // credential ID version
	nonce   []byte // 16 random bytes, also the hmac-secret salt
	public  []byte // marshalled TPMT_PUBLIC contents of TPM2B_PUBLIC
	private []byte // contents of TPM2B_PRIVATE
}
