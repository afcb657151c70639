package udev

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/tpm-fido/tpm-fido/uhid"
)

func TestRulesUHIDNeverWorldWritable(t *testing.T) {
	rules := string(Rules)
	for _, m := range regexp.MustCompile(`MODE="0?[0-7]([0-7])([0-7])([0-7])"`).FindAllStringSubmatch(rules, -1) {
		if m[3] != "0" {
			t.Errorf("%s gives every user access", m[0])
		}
	}
	want := `KERNEL=="uhid", SUBSYSTEM=="misc", GROUP="` + Group + `", MODE="0660"`
	if !strings.Contains(rules, want) {
		t.Fatalf("rules lack %q", want)
	}
}

// The rules must match the identity the daemon's uhid device really has.
func TestRulesMatchDeviceIdentity(t *testing.T) {
	id := uhid.DefaultIdentity
	if !strings.HasPrefix(id.Name, HIDName) {
		t.Errorf("device name %q does not start with %q, which the rules match", id.Name, HIDName)
	}
	rules := string(Rules)
	if !strings.Contains(rules, `ENV{HID_NAME}!="`+HIDName+`*"`) {
		t.Errorf("rules do not match HID_NAME %s*", HIDName)
	}
	kernels := fmt.Sprintf(`KERNELS=="0003:%04X:%04X.*"`, id.Vendor, id.Product)
	if !strings.Contains(rules, kernels) {
		t.Errorf("rules lack %s for the device's USB ids", kernels)
	}
	if strings.Count(rules, `TAG+="uaccess"`) != 2 {
		t.Errorf("both hidraw rules must tag uaccess")
	}
	if strings.ContainsAny(id.Uniq, "\x00\n") {
		t.Errorf("uniq %q is not printable; udev would skip the device", id.Uniq)
	}
}

func TestModulesLoad(t *testing.T) {
	var mods []string
	for _, l := range strings.Split(string(ModulesLoad), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			mods = append(mods, l)
		}
	}
	if len(mods) != 1 || mods[0] != "uhid" {
		t.Fatalf("modules-load.d lists %q, want [uhid]", mods)
	}
}
