// Package cose encodes and decodes credential public keys in the COSE_Key
// form that CTAP2 and WebAuthn use (RFC 9052/9053, CTAP 2.1 §6.1): an EC2
// P-256 key for ES256 (alg -7).
package cose

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"errors"
	"fmt"

	"github.com/tpm-fido/tpm-fido/ctap"
)

// COSE labels and values used here.
const (
	KtyEC2      = 2   // key type EC2
	AlgES256    = -7  // ECDSA with SHA-256
	AlgECDHES   = -25 // ECDH-ES + HKDF-256 (CTAP key agreement)
	CrvP256     = 1   // curve P-256
	coordLength = 32
)

// ErrInvalidKey is returned by Decode for a key that is not a well-formed
// EC2 P-256 ES256 key, or whose point is not on the curve.
var ErrInvalidKey = errors.New("cose: invalid EC2 P-256 key")

// ec2Key is the wire form. Field order is irrelevant: the encoder sorts
// keys canonically (1, 3, -1, -2, -3).
type ec2Key struct {
	Kty int64  `cbor:"1,keyasint"`
	Alg int64  `cbor:"3,keyasint"`
	Crv int64  `cbor:"-1,keyasint"`
	X   []byte `cbor:"-2,keyasint"`
	Y   []byte `cbor:"-3,keyasint"`
}

// EncodeES256 returns the canonical CBOR COSE_Key of a P-256 public key:
// {1: 2, 3: -7, -1: 1, -2: x, -3: y}.
func EncodeES256(pub *ecdsa.PublicKey) ([]byte, error) {
	if pub == nil || pub.Curve != elliptic.P256() {
		return nil, fmt.Errorf("cose: encode: %w", ErrInvalidKey)
	}
	point, err := pub.Bytes()
	if err != nil {
		return nil, fmt.Errorf("cose: encode: %w", err)
	}
	// point is 0x04 ‖ X ‖ Y, each coordinate padded to 32 bytes.
	k := ec2Key{
		Kty: KtyEC2, Alg: AlgES256, Crv: CrvP256,
		X: point[1 : 1+coordLength], Y: point[1+coordLength:],
	}
	b, err := ctap.EncodeCBOR(k)
	if err != nil {
		return nil, fmt.Errorf("cose: encode: %w", err)
	}
	return b, nil
}

// DecodeES256 parses a COSE_Key made by EncodeES256 (or any encoder), in
// the request mode of ctap.DecodeCBOR, and checks that it is an EC2 P-256 ES256 key on the curve. Errors wrap
// ErrInvalidKey.
func DecodeES256(b []byte) (*ecdsa.PublicKey, error) {
	var k ec2Key
	if err := ctap.DecodeCBOR(b, &k); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	if k.Kty != KtyEC2 || k.Alg != AlgES256 || k.Crv != CrvP256 ||
		len(k.X) != coordLength || len(k.Y) != coordLength {
		return nil, ErrInvalidKey
	}
	point := make([]byte, 0, 1+2*coordLength)
	point = append(point, 4)
	point = append(point, k.X...)
	point = append(point, k.Y...)
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	return pub, nil
}
