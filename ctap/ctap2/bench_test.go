package ctap2_test

import (
	"testing"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2"
	"github.com/tpm-fido/tpm-fido/tpmstore"
	"github.com/tpm-fido/tpm-fido/tpmstore/tpmsim"
)

func benchAssertions(b *testing.B, e *env) {
	c := e.makeCredential(mcOpts{})
	req := append([]byte{cGetAssertion}, enc(b, map[int]any{1: "example.org", 2: cdh("bench"),
		3: allowList([]byte("foreign-1"), []byte("foreign-2"), c.id)})...)
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		resp, err := e.H.Handle(b.Context(), ctap.Request{Cmd: ctap.CmdCBOR, Payload: req})
		if err != nil || ctap.Status(resp[0]) != ctap.StatusOK {
			b.Fatalf("getAssertion: % x %v", resp[:1], err)
		}
	}
}

// BenchmarkGetAssertionFake measures the CTAP2 layer alone.
func BenchmarkGetAssertionFake(b *testing.B) {
	benchAssertions(b, newEnv(b))
}

// BenchmarkGetAssertionTPMSim measures a getAssertion over the real store
// and the TPM simulator.
func BenchmarkGetAssertionTPMSim(b *testing.B) {
	sim, err := tpmsim.Open()
	if err != nil {
		b.Skipf("TPM simulator unavailable: %v", err)
	}
	defer sim.Close()
	store, err := tpmstore.Open(tpmstore.Config{TPM: sim, Dir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	defer store.Close()
	var _ ctap2.Store = store
	benchAssertions(b, newEnvWithStore(b, store))
}
