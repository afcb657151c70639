//go:build cgo

package main

import (
	"strings"
	"testing"
)

func TestDoctorTPMSimulator(t *testing.T) {
	withSimulator(t)
	env := fakeSys(t, "G:uaccess\n")
	env.tpm = "swtpm:/simulated" // skips the device-node checks; openTPM gives the simulator
	env.tpmTimeout = 30e9
	c := findCheck(env.checkTPM(), "tpm")
	if c.status != checkOK || !strings.Contains(c.detail, "ECC P-256") {
		t.Fatalf("simulator TPM: %+v", c)
	}
}
