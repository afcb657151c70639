// Package udev holds the udev rules and the modules-load.d entry that
// give tpm-fido's daemon /dev/uhid and the logged-in user the virtual
// key's hidraw node, embedded so `tpm-fido setup` can install them.
package udev

import _ "embed"

// Group is the dedicated group that owns /dev/uhid (mode 0660).
const Group = "uhid"

// HIDName is the prefix of the HID device name the rules match; the
// daemon's uhid device must be named so.
const HIDName = "tpm-fido"

// Rules is 70-tpm-fido.rules, for /etc/udev/rules.d/.
//
//go:embed 70-tpm-fido.rules
var Rules []byte

// RulesName is the file name of Rules.
const RulesName = "70-tpm-fido.rules"

// ModulesLoad is tpm-fido.conf, for /etc/modules-load.d/: loads uhid at
// boot.
//
//go:embed modules-load.d/tpm-fido.conf
var ModulesLoad []byte

// ModulesLoadName is the file name of ModulesLoad.
const ModulesLoadName = "tpm-fido.conf"
