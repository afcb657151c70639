// Package tpmstore keeps every secret of the authenticator inside the
// TPM or sealed by it: credential keys, the credential-ID wrapping key,
// the hmac-secret key, the PIN check, plus the durable state around them
// (resident credentials, the signature counter, PIN retries). It knows
// nothing of CTAP.
package tpmstore

// credentialSecret is what a credential ID carries under its AEAD: the
// TPM blobs of the credential key and the nonce. Defined fully by the
// store implementation.
type credentialSecret struct {
	nonce   []byte
	public  []byte
	private []byte
}
