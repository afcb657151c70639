package ctap2

import (
	"slices"

	"github.com/fxamacker/cbor/v2"

	"github.com/tpm-fido/tpm-fido/ctap"
)

// CBOR major types (RFC 8949 §3.1).
const (
	majUint   = 0
	majNegInt = 1
	majBytes  = 2
	majText   = 3
	majArray  = 4
	majMap    = 5
	majSimple = 7
)

func major(r cbor.RawMessage) int {
	if len(r) == 0 {
		return -1
	}
	return int(r[0] >> 5)
}

// decodeRequest decodes a command's parameter map (or a map inside it)
// into the struct v (ctap.DecodeCBOR); no parameters at all is
// CTAP2_ERR_MISSING_PARAMETER.
func decodeRequest(raw []byte, v any) error {
	if len(raw) == 0 {
		return ctap.StatusMissingParameter
	}
	return ctap.DecodeCBOR(raw, v)
}

// params is a request's top-level parameter map (integer keys).
type params map[uint64]cbor.RawMessage

// parseParams checks that raw is one well-formed CBOR item (else
// CTAP2_ERR_INVALID_CBOR) that is a map with unsigned integer keys (else
// CTAP2_ERR_CBOR_UNEXPECTED_TYPE). Empty input is an empty map.
func parseParams(raw []byte) (params, error) {
	p := params{}
	if len(raw) == 0 {
		return p, nil
	}
	if err := ctap.CheckCBOR(raw); err != nil {
		return nil, err
	}
	if major(raw) != majMap {
		return nil, ctap.StatusCBORUnexpectedType
	}
	if err := ctap.DecodeCBOR(raw, &p); err != nil {
		return nil, err
	}
	return p, nil
}

// The typed accessors return ok=false when the key is absent, and
// CTAP2_ERR_CBOR_UNEXPECTED_TYPE when it holds the wrong CBOR type.

func (p params) bytes(k uint64) ([]byte, bool, error) {
	r, ok := p[k]
	if !ok {
		return nil, false, nil
	}
	b, err := asBytes(r)
	return b, true, err
}

func (p params) text(k uint64) (string, bool, error) {
	r, ok := p[k]
	if !ok {
		return "", false, nil
	}
	s, err := asText(r)
	return s, true, err
}

func (p params) uint(k uint64) (uint64, bool, error) {
	r, ok := p[k]
	if !ok {
		return 0, false, nil
	}
	u, err := asUint(r)
	return u, true, err
}

// as decodes r into a T after checking that its major type is one of
// want (else CTAP2_ERR_CBOR_UNEXPECTED_TYPE).
func as[T any](r cbor.RawMessage, want ...int) (T, error) {
	var v T
	if !slices.Contains(want, major(r)) {
		return v, ctap.StatusCBORUnexpectedType
	}
	err := ctap.DecodeCBOR(r, &v)
	return v, err
}

func asBytes(r cbor.RawMessage) ([]byte, error) {
	b, err := as[[]byte](r, majBytes)
	if err == nil && b == nil {
		b = []byte{}
	}
	return b, err
}

func asText(r cbor.RawMessage) (string, error) { return as[string](r, majText) }

func asUint(r cbor.RawMessage) (uint64, error) { return as[uint64](r, majUint) }

func asInt(r cbor.RawMessage) (int64, error) { return as[int64](r, majUint, majNegInt) }

func asBool(r cbor.RawMessage) (bool, error) {
	if len(r) != 1 || (r[0] != 0xf4 && r[0] != 0xf5) {
		return false, ctap.StatusCBORUnexpectedType
	}
	return r[0] == 0xf5, nil
}

func asArray(r cbor.RawMessage) ([]cbor.RawMessage, error) {
	return as[[]cbor.RawMessage](r, majArray)
}

// asTextMap decodes a map whose keys must all be text strings.
func asTextMap(r cbor.RawMessage) (map[string]cbor.RawMessage, error) {
	return as[map[string]cbor.RawMessage](r, majMap)
}

// asIntMap decodes a map whose keys must all be integers.
func asIntMap(r cbor.RawMessage) (map[int64]cbor.RawMessage, error) {
	return as[map[int64]cbor.RawMessage](r, majMap)
}
