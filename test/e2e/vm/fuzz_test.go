package vm

import (
	"errors"
	"testing"
)

// FuzzParse: any console output parses without a panic, and every result
// it reports has a name.
func FuzzParse(f *testing.F) {
	f.Add([]byte("E2E-RESULT a PASS 1s\nE2E-LOG a: x\nE2E-FILE f aGk=\n"))
	f.Add([]byte("[ 1.0] x E2E-RESULT b FAIL why\r\nE2E-DONE phase=1\r\n"))
	f.Add([]byte("E2E-RESULT\nE2E-LOG\nE2E-FILE x\n"))
	f.Fuzz(func(t *testing.T, log []byte) {
		r := Parse(log)
		if len(r.Order) != len(r.Results) {
			t.Fatalf("%d names in order, %d results", len(r.Order), len(r.Results))
		}
		for _, name := range r.Order {
			if r.Results[name] == nil || r.Results[name].Name != name {
				t.Fatalf("result %q missing or misnamed", name)
			}
		}
	})
}

// FuzzVerifySSHAttestation: arbitrary files never panic and never verify
// against the seed key unless they are the seed file.
func FuzzVerifySSHAttestation(f *testing.F) {
	chal := []byte("challenge")
	att, pub, _ := makeAttestation(f, "ssh:", chal)
	f.Add(att)
	f.Add(att[:len(att)/2])
	f.Add([]byte{0, 0, 0, 17})
	f.Fuzz(func(t *testing.T, data []byte) {
		err := VerifySSHAttestation(data, chal, pub)
		if err != nil && !errors.Is(err, ErrBadAttestation) {
			t.Fatalf("error %v does not wrap ErrBadAttestation", err)
		}
		if err == nil && string(data) != string(att) {
			// Only trailing bytes after the reserved fields may differ.
			if len(data) < len(att)-8 || string(data[:len(att)-8]) != string(att[:len(att)-8]) {
				t.Fatalf("a different file verified")
			}
		}
	})
}
