//go:build cgo && !nolibfido2

package interop

import (
	"slices"
	"testing"
)

func TestGetInfo(t *testing.T) {
	d := startDaemon(t)
	dev := d.open(t)
	if !dev.IsFIDO2() {
		t.Fatal("libfido2 does not see a FIDO2 device")
	}
	info, err := dev.Info()
	if err != nil {
		t.Fatalf("fido_dev_get_cbor_info: %v", err)
	}
	t.Logf("versions %v extensions %v options %v protocols %v", info.Versions, info.Extensions, info.Options, info.Protocols)
	for _, v := range []string{"U2F_V2", "FIDO_2_0", "FIDO_2_1"} {
		if !slices.Contains(info.Versions, v) {
			t.Errorf("versions %v lack %s", info.Versions, v)
		}
	}
	for _, e := range []string{"credProtect", "hmac-secret"} {
		if !slices.Contains(info.Extensions, e) {
			t.Errorf("extensions %v lack %s", info.Extensions, e)
		}
	}
	for _, o := range []string{"rk", "up", "credMgmt"} {
		if !info.Options[o] {
			t.Errorf("option %s not true in %v", o, info.Options)
		}
	}
	if v, ok := info.Options["clientPin"]; !ok || v {
		t.Errorf("clientPin option = %v (present %v), want false before a PIN is set", v, ok)
	}
	if !slices.Contains(info.Protocols, 2) || !slices.Contains(info.Protocols, 1) {
		t.Errorf("pinUvAuthProtocols %v, want 2 and 1", info.Protocols)
	}
}
