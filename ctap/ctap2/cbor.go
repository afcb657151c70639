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
	if major(raw) != majMap {
		if err := ctap.CheckCBOR(raw); err != nil {
			return nil, err
		}
		return nil, ctap.StatusCBORUnexpectedType
	}
	// A map is decoded in one pass: decoding checks well-formedness
	// first, as CheckCBOR does.
	if err := ctap.DecodeCBOR(raw, &p); err != nil {
		return nil, err
	}
	return p, nil
}

// need decodes m[k] with as (asText, asBytes, ...): a missing key is
// CTAP2_ERR_MISSING_PARAMETER, the wrong CBOR type
// CTAP2_ERR_CBOR_UNEXPECTED_TYPE.
func need[K comparable, T any](m map[K]cbor.RawMessage, k K, as func(cbor.RawMessage) (T, error)) (T, error) {
	v, ok := m[k]
	if !ok {
		var zero T
		return zero, ctap.StatusMissingParameter
	}
	return as(v)
}

// opt decodes m[k] with as into *dst when the key is present; it reports
// whether it was.
func opt[K comparable, T any](m map[K]cbor.RawMessage, k K, as func(cbor.RawMessage) (T, error), dst *T) (bool, error) {
	v, ok := m[k]
	if !ok {
		return false, nil
	}
	var err error
	*dst, err = as(v)
	return true, err
}

// requireKeys is CTAP2_ERR_MISSING_PARAMETER unless m holds every key:
// where a structure's members are all checked for presence before any is
// type-checked.
func requireKeys[K comparable](m map[K]cbor.RawMessage, keys ...K) error {
	for _, k := range keys {
		if _, ok := m[k]; !ok {
			return ctap.StatusMissingParameter
		}
	}
	return nil
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

// eachStruct decodes an array of maps with text keys (WebAuthn
// dictionaries) and calls f on each in turn, after checking that it holds
// every one of members: a wrong type is CTAP2_ERR_CBOR_UNEXPECTED_TYPE, a
// missing member CTAP2_ERR_MISSING_PARAMETER, found entry by entry.
func eachStruct(r cbor.RawMessage, members []string, f func(m map[string]cbor.RawMessage) error) error {
	arr, err := asArray(r)
	if err != nil {
		return err
	}
	for _, e := range arr {
		m, err := asTextMap(e)
		if err != nil {
			return err
		}
		if err := requireKeys(m, members...); err != nil {
			return err
		}
		if err := f(m); err != nil {
			return err
		}
	}
	return nil
}
