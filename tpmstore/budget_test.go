package tpmstore

import (
	"crypto/rand"
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/tpm-fido/tpm-fido/tpmstore/tpmtest"
)

// foreignIDs returns n credential IDs this store did not make: random
// bytes of a valid length with a valid version byte (the costliest case
// for OpenCredential, which must run the AEAD to reject them).
func foreignIDs(n int) [][]byte {
	ids := make([][]byte, n)
	for i := range ids {
		ids[i] = make([]byte, 226)
		rand.Read(ids[i])
		ids[i][0] = credIDVersion
	}
	return ids
}

// TestCommandBudget checks the TPM command budget of each store
// operation with the counting wrapper (docs/tpmstore.md, "Command
// budget"). An assertion is what getAssertion asks of the store:
// OpenCredential over the allowList, NextCounter, Sign.
func TestCommandBudget(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			ct := tpmtest.NewCountingTPM(b.open(t))
			dir := t.TempDir()
			check := func(what string, max int, fn func()) int {
				t.Helper()
				ct.Reset()
				fn()
				n := ct.Total()
				t.Logf("%-44s %d TPM commands %v", what, n, ct.Snapshot())
				if n > max {
					t.Errorf("%s: %d TPM commands, budget %d", what, n, max)
				}
				return n
			}
			var s *Store
			// Once per store: SRK, 2 handle lists, anchor key (CreateLoaded,
			// EvictControl, FlushContext), counter index (DefineSpace,
			// Increment, Read), HMAC.
			check("first start (creates the TPM objects)", 10, func() { s = openStore(t, ct, dir) })
			s.Close()
			if n := check("start", 3, func() { s = openStore(t, ct, dir) }); n != 3 ||
				ct.Count(tpm2.TPMCCCreatePrimary) != 1 || ct.Count(tpm2.TPMCCHMAC) != 1 || ct.Count(tpm2.TPMCCNVRead) != 1 {
				t.Errorf("start: %d commands %v, want CreatePrimary + HMAC + NV_Read", n, ct.Snapshot())
			}
			rp := rpHash("example.org")
			d := sha256.Sum256([]byte("client data"))
			var creds []*Credential
			for i := 0; i < 3; i++ {
				// The first counter value after a start opens a block: +1.
				check("create credential + counter + attestation sign", 4, func() {
					c, err := s.CreateCredential(rp, CredentialOptions{HMACSecret: true})
					if err != nil {
						t.Fatal(err)
					}
					if _, err := s.NextCounter(); err != nil {
						t.Fatal(err)
					}
					if _, err := s.Sign(c, d[:]); err != nil {
						t.Fatal(err)
					}
					creds = append(creds, c)
				})
			}
			last := creds[len(creds)-1]
			assert := func(c *Credential, allow [][]byte) func() {
				return func() {
					var found *Credential
					for _, id := range append(allow, c.ID) {
						if o, err := s.OpenCredential(rp, id); err == nil {
							found = o
							break
						}
					}
					if found == nil {
						t.Fatal("own credential not found")
					}
					if _, err := s.NextCounter(); err != nil {
						t.Fatal(err)
					}
					if _, err := s.Sign(found, d[:]); err != nil {
						t.Fatal(err)
					}
				}
			}
			if n := check("assertion, credential used last", 1, assert(last, nil)); n != 1 {
				t.Errorf("warm assertion: %d commands, want exactly 1", n)
			}
			check("assertion, cold credential", 3, assert(creds[0], nil))
			warm := check("assertion, warm again", 1, assert(creds[0], nil))
			withForeign := check("assertion, 64 foreign IDs + ours", 1, assert(creds[0], foreignIDs(64)))
			if withForeign != warm {
				t.Errorf("allowList of 64 foreign IDs costs %d, ours alone %d", withForeign, warm)
			}
			ct.Reset()
			for _, id := range foreignIDs(64) {
				if _, err := s.OpenCredential(rp, id); err == nil {
					t.Fatal("a foreign ID opened")
				}
			}
			if n := ct.Total(); n != 0 {
				t.Errorf("64 foreign IDs alone: %d TPM commands, want 0", n)
			}
			const n = 1000
			total := check("1000 warm assertions", n+n/counterReserve+1, func() {
				for range n {
					assert(creds[0], nil)()
				}
			})
			t.Logf("average warm assertion: %.3f TPM commands (%d TPM2_NV_Increment)", float64(total)/n, ct.Count(tpm2.TPMCCNVIncrement))
			if ct.Count(tpm2.TPMCCNVIncrement) < n/counterReserve {
				t.Errorf("%d NV increments for %d counter values", ct.Count(tpm2.TPMCCNVIncrement), n)
			}
			hmacN := check("assertion + hmac-secret", warm+2, func() {
				assert(creds[0], nil)()
				c, _ := s.OpenCredential(rp, creds[0].ID)
				if _, err := s.CredRandom(c, true); err != nil {
					t.Fatal(err)
				}
			})
			if hmacN-warm > 1 {
				t.Errorf("hmac-secret adds %d commands, budget 1", hmacN-warm)
			}
			if ct.Count(tpm2.TPMCCHMAC) == 0 {
				t.Error("CredRandom sent no TPM2_HMAC")
			}
			// A user-verified assertion with a credProtect-3 (PIN-bound)
			// credential: the policy session costs StartAuthSession, Load
			// and FlushContext of the PIN object, PolicySecret.
			if err := s.SetPIN(pinHash("1234")); err != nil {
				t.Fatal(err)
			}
			c3, err := s.CreateCredential(rp, CredentialOptions{CredProtect: 3})
			if err != nil {
				t.Fatal(err)
			}
			uvAssert := func() {
				o, err := s.OpenCredential(rp, c3.ID)
				if err != nil {
					t.Fatal(err)
				}
				if _, err := s.NextCounter(); err != nil {
					t.Fatal(err)
				}
				if _, err := s.SignWithPIN(o, d[:], pinHash("1234")); err != nil {
					t.Fatal(err)
				}
			}
			uvAssert()
			if n := check("UV assertion, PIN-bound credential used last", 5, uvAssert); n != 5 ||
				ct.Count(tpm2.TPMCCStartAuthSession) != 1 || ct.Count(tpm2.TPMCCPolicySecret) != 1 {
				t.Errorf("UV assertion: %d commands %v, want StartAuthSession, Load, PolicySecret, FlushContext, Sign", n, ct.Snapshot())
			}
			check("UV assertion, PIN-bound credential cold", 7, func() {
				assert(creds[0], nil)()
				ct.Reset()
				uvAssert()
			})
			check("reset (replaces the anchor key)", 7, func() {
				if err := s.Reset(); err != nil {
					t.Fatal(err)
				}
			})
		})
	}
}
