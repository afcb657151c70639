// Package systemd holds tpm-fido's hardened systemd user unit, embedded
// so `tpm-fido setup` can install it.
package systemd

import (
	"bytes"
	_ "embed"
)

//go:embed tpm-fido.service
var unit []byte

// UnitName is the unit's file name.
const UnitName = "tpm-fido.service"

// Unit returns the user unit with ExecStart pointing at binary (an
// absolute path to the tpm-fido executable).
func Unit(binary string) []byte {
	return bytes.ReplaceAll(unit, []byte("@BINARY@"), []byte(binary))
}
