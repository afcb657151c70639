package ctap

import (
	"errors"
	"fmt"
	"sync"

	"github.com/fxamacker/cbor/v2"
)

// CBOR (CTAP 2.1 §8). Every CBOR a client sends — a command's parameter
// map and everything inside it, COSE keys included — is decoded in one
// mode: one well-formed item, definite lengths, no duplicate map keys, no
// tags, at most 8 levels of nesting, 1024 array elements and 256 map
// pairs (CTAP2 messages need far less). What the authenticator sends is
// CTAP2 canonical CBOR.
var (
	decMode = sync.OnceValues(func() (cbor.DecMode, error) {
		return cbor.DecOptions{
			DupMapKey:        cbor.DupMapKeyEnforcedAPF,
			IndefLength:      cbor.IndefLengthForbidden,
			TagsMd:           cbor.TagsForbidden,
			MaxNestedLevels:  8,
			MaxArrayElements: 1024,
			MaxMapPairs:      256,
		}.DecMode()
	})
	encMode = sync.OnceValues(func() (cbor.EncMode, error) {
		return cbor.CTAP2EncOptions().EncMode()
	})
)

// CheckCBOR checks that b is exactly one well-formed CBOR item in the
// request mode. Failure is StatusInvalidCBOR.
func CheckCBOR(b []byte) error {
	dm, err := decMode()
	if err != nil {
		return fmt.Errorf("ctap: cbor mode: %w", err)
	}
	if err := dm.Wellformed(b); err != nil {
		return fmt.Errorf("%w: %w", StatusInvalidCBOR, err)
	}
	return nil
}

// DecodeCBOR decodes b, one item a client sent, into v in the request
// mode. A well-formed item of the wrong type for v is
// StatusCBORUnexpectedType; anything else that fails is
// StatusInvalidCBOR. The cause is wrapped.
func DecodeCBOR(b []byte, v any) error {
	dm, err := decMode()
	if err != nil {
		return fmt.Errorf("ctap: cbor mode: %w", err)
	}
	if err := dm.Unmarshal(b, v); err != nil {
		var te *cbor.UnmarshalTypeError
		if errors.As(err, &te) {
			return fmt.Errorf("%w: %w", StatusCBORUnexpectedType, err)
		}
		return fmt.Errorf("%w: %w", StatusInvalidCBOR, err)
	}
	return nil
}

// EncodeCBOR encodes v in CTAP2 canonical form.
func EncodeCBOR(v any) ([]byte, error) {
	em, err := encMode()
	if err != nil {
		return nil, fmt.Errorf("ctap: cbor mode: %w", err)
	}
	b, err := em.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("ctap: cbor encode: %w", err)
	}
	return b, nil
}
