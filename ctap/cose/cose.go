// Package cose is the COSE_Key form (RFC 9052/9053, CTAP 2.1 §6.1) of the
// two kinds of P-256 public key CTAP2 carries: credential public keys
// (EC2, ES256, alg -7) and the PIN/UV auth protocols' key-agreement keys
// (EC2, ECDH-ES+HKDF-256, alg -25). Key is the one type for both, on the
// wire and in code.
package cose

import (
	"crypto/ecdh"
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

// ErrInvalidKey is returned for a key that is not a well-formed EC2 P-256
// key (or not of the algorithm asked for), or whose point is not on the
// curve.
var ErrInvalidKey = errors.New("cose: invalid EC2 P-256 key")

// Key is an EC2 COSE_Key. Field order is irrelevant: the encoder sorts
// keys canonically (1, 3, -1, -2, -3).
type Key struct {
	Kty int64  `cbor:"1,keyasint"`
	Alg int64  `cbor:"3,keyasint"`
	Crv int64  `cbor:"-1,keyasint"`
	X   []byte `cbor:"-2,keyasint"`
	Y   []byte `cbor:"-3,keyasint"`
}

// fromPoint makes the Key of an uncompressed P-256 point 0x04 ‖ X ‖ Y.
func fromPoint(alg int64, point []byte) Key {
	return Key{
		Kty: KtyEC2, Alg: alg, Crv: CrvP256,
		X: point[1 : 1+coordLength], Y: point[1+coordLength:],
	}
}

// ES256 returns the COSE_Key of a P-256 credential public key:
// {1: 2, 3: -7, -1: 1, -2: x, -3: y}.
func ES256(pub *ecdsa.PublicKey) (Key, error) {
	if pub == nil || pub.Curve != elliptic.P256() {
		return Key{}, ErrInvalidKey
	}
	point, err := pub.Bytes() // each coordinate padded to 32 bytes
	if err != nil {
		return Key{}, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	return fromPoint(AlgES256, point), nil
}

// ECDHES returns the COSE_Key of a P-256 key-agreement key:
// {1: 2, 3: -25, -1: 1, -2: x, -3: y}.
func ECDHES(pub *ecdh.PublicKey) (Key, error) {
	if pub == nil || pub.Curve() != ecdh.P256() {
		return Key{}, ErrInvalidKey
	}
	return fromPoint(AlgECDHES, pub.Bytes()), nil
}

// Point returns the key's uncompressed point 0x04 ‖ X ‖ Y after checking
// that it is an EC2 P-256 key with 32-byte coordinates (whatever its alg;
// whether the point is on the curve is for the caller's parser). Errors
// wrap ErrInvalidKey.
func (k Key) Point() ([]byte, error) {
	if k.Kty != KtyEC2 || k.Crv != CrvP256 {
		return nil, fmt.Errorf("%w: kty %d crv %d", ErrInvalidKey, k.Kty, k.Crv)
	}
	if len(k.X) != coordLength || len(k.Y) != coordLength {
		return nil, fmt.Errorf("%w: coordinates of %d and %d bytes", ErrInvalidKey, len(k.X), len(k.Y))
	}
	point := make([]byte, 0, 1+2*coordLength)
	point = append(point, 4)
	point = append(point, k.X...)
	return append(point, k.Y...), nil
}

// ECDH returns the key as an ECDH P-256 public key. A point off the
// curve, or an ill-formed key, is an error wrapping ErrInvalidKey; the
// alg label is not checked (clients send -25, or nothing useful).
func (k Key) ECDH() (*ecdh.PublicKey, error) {
	point, err := k.Point()
	if err != nil {
		return nil, err
	}
	pub, err := ecdh.P256().NewPublicKey(point) // rejects points off the curve
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	return pub, nil
}

// ECDSA returns the key as an ES256 public key: alg must be -7 and the
// point on the curve. Errors wrap ErrInvalidKey.
func (k Key) ECDSA() (*ecdsa.PublicKey, error) {
	if k.Alg != AlgES256 {
		return nil, fmt.Errorf("%w: alg %d", ErrInvalidKey, k.Alg)
	}
	point, err := k.Point()
	if err != nil {
		return nil, err
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), point)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	return pub, nil
}

// EncodeES256 returns the canonical CBOR of ES256(pub).
func EncodeES256(pub *ecdsa.PublicKey) ([]byte, error) {
	k, err := ES256(pub)
	if err != nil {
		return nil, fmt.Errorf("cose: encode: %w", err)
	}
	return ctap.EncodeCBOR(k)
}

// DecodeES256 parses a COSE_Key made by EncodeES256 (or any encoder), in
// the request mode of ctap.DecodeCBOR, and checks that it is an EC2 P-256
// ES256 key on the curve. Errors wrap ErrInvalidKey.
func DecodeES256(b []byte) (*ecdsa.PublicKey, error) {
	var k Key
	if err := ctap.DecodeCBOR(b, &k); err != nil {
		return nil, fmt.Errorf("%w: %w", ErrInvalidKey, err)
	}
	return k.ECDSA()
}
