package tpmstore

import (
	"crypto/sha256"
	"testing"

	"github.com/google/go-tpm/tpm2"

	"github.com/tpm-fido/tpm-fido/tpmstore/tpmtest"
)

// Benchmarks report TPM commands per operation ("tpmcmds/op") from the
// counting wrapper next to the latency. Run:
//
//	go test -run '^$' -bench . -benchtime 200x ./tpmstore/
//
// (The store's start includes creating the TPM objects once per store;
// BenchmarkStart measures the later starts.)
func benchBackends(b *testing.B, fn func(b *testing.B, ct *tpmtest.CountingTPM)) {
	for _, be := range backends(b) {
		b.Run(be.name, func(b *testing.B) {
			fn(b, tpmtest.NewCountingTPM(be.open(b)))
		})
	}
}

func reportCmds(b *testing.B, ct *tpmtest.CountingTPM) {
	b.ReportMetric(float64(ct.Total())/float64(b.N), "tpmcmds/op")
}

func BenchmarkStart(b *testing.B) {
	benchBackends(b, func(b *testing.B, ct *tpmtest.CountingTPM) {
		dir := b.TempDir()
		s, err := Open(Config{TPM: ct, Dir: dir})
		if err != nil {
			b.Fatal(err)
		}
		s.Close()
		n := 0
		b.ResetTimer()
		for b.Loop() {
			ct.Reset()
			s, err := Open(Config{TPM: ct, Dir: dir})
			if err != nil {
				b.Fatal(err)
			}
			n += ct.Total()
			b.StopTimer()
			s.Close()
			b.StartTimer()
		}
		b.ReportMetric(float64(n)/float64(b.N), "tpmcmds/op")
	})
}

func BenchmarkCreateCredential(b *testing.B) {
	benchBackends(b, func(b *testing.B, ct *tpmtest.CountingTPM) {
		s := openStore(b, ct, b.TempDir())
		rp := rpHash("example.org")
		d := sha256.Sum256([]byte("attestation"))
		// Steady state: the cache is full, as in a running daemon.
		for range 3 {
			if _, err := s.CreateCredential(rp, CredentialOptions{}); err != nil {
				b.Fatal(err)
			}
		}
		ct.Reset()
		for b.Loop() {
			c, err := s.CreateCredential(rp, CredentialOptions{})
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.Sign(c, d[:]); err != nil {
				b.Fatal(err)
			}
		}
		reportCmds(b, ct)
	})
}

func benchAssert(b *testing.B, ct *tpmtest.CountingTPM, cold bool, allow [][]byte, hmacSecret bool) {
	s := openStore(b, ct, b.TempDir())
	rp := rpHash("example.org")
	d := sha256.Sum256([]byte("client data"))
	a, err := s.CreateCredential(rp, CredentialOptions{HMACSecret: true})
	if err != nil {
		b.Fatal(err)
	}
	other, err := s.CreateCredential(rp, CredentialOptions{})
	if err != nil {
		b.Fatal(err)
	}
	ids := append(allow, a.ID)
	if _, err := s.Sign(a, d[:]); err != nil { // a is the credential used last
		b.Fatal(err)
	}
	ct.Reset()
	for b.Loop() {
		if cold {
			// Use the other credential so a is evicted (not counted).
			b.StopTimer()
			n := ct.Snapshot()
			if _, err := s.Sign(other, d[:]); err != nil {
				b.Fatal(err)
			}
			ct.Restore(n)
			b.StartTimer()
		}
		var c *Credential
		for _, id := range ids {
			if o, err := s.OpenCredential(rp, id); err == nil {
				c = o
				break
			}
		}
		if c == nil {
			b.Fatal("credential not found")
		}
		if _, err := s.Sign(c, d[:]); err != nil {
			b.Fatal(err)
		}
		if hmacSecret {
			if _, err := s.CredRandom(c, true); err != nil {
				b.Fatal(err)
			}
		}
		if _, err := s.NextCounter(); err != nil {
			b.Fatal(err)
		}
	}
	reportCmds(b, ct)
}

// BenchmarkAssertionUV is a user-verified assertion with a credProtect-3
// (PIN-bound) credential: the TPM policy session with PolicySecret on
// the PIN object around TPM2_Sign.
func BenchmarkAssertionUV(b *testing.B) {
	benchBackends(b, func(b *testing.B, ct *tpmtest.CountingTPM) {
		s := openStore(b, ct, b.TempDir())
		rp := rpHash("ssh:")
		pin := [16]byte{1, 2, 3, 4}
		if err := s.SetPIN(pin); err != nil {
			b.Fatal(err)
		}
		c, err := s.CreateCredential(rp, CredentialOptions{CredProtect: CredProtectUVRequired})
		if err != nil {
			b.Fatal(err)
		}
		d := sha256.Sum256([]byte("client data"))
		if _, err := s.SignWithPIN(c, d[:], pin); err != nil {
			b.Fatal(err)
		}
		ct.Reset()
		for b.Loop() {
			o, err := s.OpenCredential(rp, c.ID)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := s.NextCounter(); err != nil {
				b.Fatal(err)
			}
			if _, err := s.SignWithPIN(o, d[:], pin); err != nil {
				b.Fatal(err)
			}
		}
		reportCmds(b, ct)
	})
}

// BenchmarkVerifyPIN is a PIN check with the dictionary-attack guard
// (TPM2_GetCapability before the PIN object's Load and Unseal).
func BenchmarkVerifyPIN(b *testing.B) {
	benchBackends(b, func(b *testing.B, ct *tpmtest.CountingTPM) {
		s := openStore(b, ct, b.TempDir())
		pin := [16]byte{1, 2, 3, 4}
		if err := s.SetPIN(pin); err != nil {
			b.Fatal(err)
		}
		ct.Reset()
		for b.Loop() {
			if err := s.VerifyPIN(pin); err != nil {
				b.Fatal(err)
			}
		}
		reportCmds(b, ct)
	})
}

func BenchmarkAssertionWarm(b *testing.B) {
	benchBackends(b, func(b *testing.B, ct *tpmtest.CountingTPM) { benchAssert(b, ct, false, nil, false) })
}

func BenchmarkAssertionCold(b *testing.B) {
	benchBackends(b, func(b *testing.B, ct *tpmtest.CountingTPM) { benchAssert(b, ct, true, nil, false) })
}

func BenchmarkAssertionAllowList64Foreign(b *testing.B) {
	benchBackends(b, func(b *testing.B, ct *tpmtest.CountingTPM) { benchAssert(b, ct, false, foreignIDs(64), false) })
}

func BenchmarkAssertionHMACSecret(b *testing.B) {
	benchBackends(b, func(b *testing.B, ct *tpmtest.CountingTPM) { benchAssert(b, ct, false, nil, true) })
}

// BenchmarkCounter reports fsyncs (committed write transactions) and TPM
// commands (TPM2_NV_Increment, one per block) per 256 NextCounter calls.
func BenchmarkCounter(b *testing.B) {
	benchBackends(b, func(b *testing.B, ct *tpmtest.CountingTPM) {
		s := openStore(b, ct, b.TempDir())
		s.mu.Lock()
		start := s.syncs
		s.mu.Unlock()
		ct.Reset()
		for b.Loop() {
			if _, err := s.NextCounter(); err != nil {
				b.Fatal(err)
			}
		}
		s.mu.Lock()
		syncs := s.syncs - start
		s.mu.Unlock()
		b.ReportMetric(float64(syncs)*256/float64(b.N), "fsyncs/256ops")
		b.ReportMetric(float64(ct.Total())*256/float64(b.N), "tpmcmds/256ops")
	})
}

// BenchmarkBareSign is the floor: one TPM2_Sign with a loaded key and
// nothing else, on the same TPM.
func BenchmarkBareSign(b *testing.B) {
	benchBackends(b, func(b *testing.B, ct *tpmtest.CountingTPM) {
		s := openStore(b, ct, b.TempDir())
		c, err := s.CreateCredential(rpHash("example.org"), CredentialOptions{})
		if err != nil {
			b.Fatal(err)
		}
		h, ok := s.slots.get(credSlot(c.ID))
		if !ok {
			b.Fatal("credential not loaded")
		}
		d := sha256.Sum256([]byte("x"))
		cmd := tpm2.Sign{
			KeyHandle: authOf(h, nil),
			Digest:    tpm2.TPM2BDigest{Buffer: d[:]},
			InScheme: tpm2.TPMTSigScheme{
				Scheme:  tpm2.TPMAlgECDSA,
				Details: tpm2.NewTPMUSigScheme(tpm2.TPMAlgECDSA, &tpm2.TPMSSchemeHash{HashAlg: tpm2.TPMAlgSHA256}),
			},
			Validation: tpm2.TPMTTKHashCheck{Tag: tpm2.TPMSTHashCheck, Hierarchy: tpm2.TPMRHNull},
		}
		ct.Reset()
		for b.Loop() {
			if _, err := cmd.Execute(ct); err != nil {
				b.Fatal(err)
			}
		}
		reportCmds(b, ct)
	})
}

// BenchmarkOpenCredentialForeign is the software cost of rejecting one
// foreign credential ID (no TPM command).
func BenchmarkOpenCredentialForeign(b *testing.B) {
	ct := tpmtest.NewCountingTPM(openSimulator(b))
	s := openStore(b, ct, b.TempDir())
	ids := foreignIDs(64)
	rp := rpHash("example.org")
	ct.Reset()
	i := 0
	for b.Loop() {
		if _, err := s.OpenCredential(rp, ids[i%len(ids)]); err == nil {
			b.Fatal("foreign ID accepted")
		}
		i++
	}
	reportCmds(b, ct)
}
