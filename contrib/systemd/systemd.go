// Package systemd holds tpm-fido's hardened systemd units and its
// sysusers.d entry, embedded so `tpm-fido setup` can install them: the
// user unit that runs the daemon, and the system unit of the relay that
// alone opens /dev/uhid, as its own system user.
package systemd

import (
	"bytes"
	_ "embed"
)

//go:embed tpm-fido.service
var unit []byte

//go:embed tpm-fido-relay.service
var relayUnit []byte

// UnitName is the user unit's file name.
const UnitName = "tpm-fido.service"

// RelayUnitName is the relay's system unit's file name.
const RelayUnitName = "tpm-fido-relay.service"

// RelayUser is the relay's system user (a member of the uhid group).
const RelayUser = "tpm-fido-relay"

// Sysusers is the sysusers.d entry: the uhid group and the relay's
// system user in it.
//
//go:embed tpm-fido.sysusers
var Sysusers []byte

// SysusersName is Sysusers' file name in /etc/sysusers.d.
const SysusersName = "tpm-fido.conf"

// Unit returns the user unit with ExecStart pointing at binary (an
// absolute path to the tpm-fido executable).
func Unit(binary string) []byte {
	return bytes.ReplaceAll(unit, []byte("@BINARY@"), []byte(binary))
}

// RelayUnit returns the relay's system unit with ExecStart pointing at
// binary.
func RelayUnit(binary string) []byte {
	return bytes.ReplaceAll(relayUnit, []byte("@BINARY@"), []byte(binary))
}
