// Package attestation builds the attestation statement returned with a
// new credential. The default is "packed" self-attestation (WebAuthn
// §8.2): the new credential's own key signs authenticatorData ‖
// clientDataHash, with no certificate chain, so registrations cannot be
// linked to one another or to this machine.
package attestation

import (
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"fmt"
)

// FormatPacked is the attestation statement format identifier.
const FormatPacked = "packed"

// AlgES256 is the COSE algorithm of the statement's signature.
const AlgES256 = -7

// ErrBadSignature is returned by VerifyPackedSelf when the statement's
// signature does not verify.
var ErrBadSignature = errors.New("attestation: signature does not verify")

// Signer signs a SHA-256 digest with the credential's private key and
// returns an ASN.1 DER ECDSA signature. A tpmstore credential's Sign fits.
type Signer func(digest []byte) ([]byte, error)

// Packed is a packed attestation statement without x5c (self
// attestation): {"alg": -7, "sig": bytes}.
type Packed struct {
	Alg int64  `cbor:"alg"`
	Sig []byte `cbor:"sig"`
}

// SignedData returns authData ‖ clientDataHash, the bytes the statement
// signs.
func SignedData(authData, clientDataHash []byte) []byte {
	out := make([]byte, 0, len(authData)+len(clientDataHash))
	out = append(out, authData...)
	return append(out, clientDataHash...)
}

// PackedSelf makes a packed self-attestation statement for a credential
// whose key is behind sign.
func PackedSelf(authData, clientDataHash []byte, sign Signer) (Packed, error) {
	digest := sha256.Sum256(SignedData(authData, clientDataHash))
	sig, err := sign(digest[:])
	if err != nil {
		return Packed{}, fmt.Errorf("attestation: sign: %w", err)
	}
	return Packed{Alg: AlgES256, Sig: sig}, nil
}

// VerifyPackedSelf checks a packed self-attestation statement against the
// credential public key, as a relying party does (WebAuthn §8.2,
// "If x5c is not present"). Errors: ErrBadSignature, or a description of
// the malformed statement.
func VerifyPackedSelf(pub *ecdsa.PublicKey, authData, clientDataHash []byte, st Packed) error {
	if st.Alg != AlgES256 {
		return fmt.Errorf("attestation: alg %d, want %d", st.Alg, AlgES256)
	}
	if pub == nil {
		return errors.New("attestation: no public key")
	}
	digest := sha256.Sum256(SignedData(authData, clientDataHash))
	if !ecdsa.VerifyASN1(pub, digest[:], st.Sig) {
		return ErrBadSignature
	}
	return nil
}
