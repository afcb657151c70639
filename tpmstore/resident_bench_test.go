package tpmstore

import (
	"fmt"
	"testing"
)

// BenchmarkResidents measures the store's side of the resident-credential
// operations, without the TPM or a transport, at 10 to 10,000 stored
// credentials spread over 1 and 1,000 RPs. Besides the time it reports
// bbolt page writes per put ("pages/op", from the database's own
// statistics: what one fsynced commit writes), which does not depend on
// machine load:
//
//	go test -run '^$' -bench Residents -benchtime 2000x ./tpmstore/
//
// The operations use the first RP, which holds ceil(n / RPs) credentials.
// put stores a credential for a new user (fsynced) and is undone,
// untimed, by a delete, so n stays put; discover is what getAssertion
// asks (the RP's kept counts, then its newest credential); next is one
// getNextAssertion or enumeration step from a cursor; byID is the lookup
// behind deleteCredential.
func BenchmarkResidents(b *testing.B) {
	for _, rps := range []int{1, 1000} {
		for _, n := range []int{10, 100, 1000, 10000} {
			b.Run(fmt.Sprintf("rps=%d/n=%d", rps, n), func(b *testing.B) {
				benchResidents(b, n, min(rps, n))
			})
		}
	}
}

func benchResidents(b *testing.B, n, rps int) {
	s, err := Open(Config{TPM: openSimulator(b), Dir: b.TempDir(), MaxResidents: 2 * n})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	var seed []Resident
	for i := range n {
		seed = append(seed, genResident(fmt.Sprintf("rp%04d.example", i%rps), fmt.Sprintf("user-%05d", i), 1))
	}
	for i := 0; i < n; i += 1000 {
		putResidentsBulk(b, s, seed[i:min(i+1000, n)])
	}
	target := rpHash("rp0000.example")
	perRP := (n + rps - 1) / rps
	writes := func() int64 { st := s.db.Stats(); return st.TxStats.GetWrite() }

	b.Run("put", func(b *testing.B) {
		w0, i := writes(), 0
		for b.Loop() {
			i++
			r := genResident("rp0000.example", fmt.Sprintf("new-%d", i), 1)
			if err := s.PutResident(r); err != nil {
				b.Fatal(err)
			}
			b.StopTimer()
			w := writes()
			if err := s.DeleteResident(r.CredentialID); err != nil {
				b.Fatal(err)
			}
			w0 += writes() - w // the delete's pages are not the put's
			b.StartTimer()
		}
		b.ReportMetric(float64(writes()-w0)/float64(b.N), "pages/op")
	})
	b.Run("discover", func(b *testing.B) {
		for b.Loop() {
			rp, err := s.ResidentRP(target)
			if err != nil || rp.CountWithoutUV != perRP {
				b.Fatalf("RP %+v, %v", rp, err)
			}
			l, _, err := s.ListResidents(target, ResidentsWithoutUV, nil, 1)
			if err != nil || len(l) != 1 {
				b.Fatal(err)
			}
		}
	})
	if perRP > 1 {
		b.Run("next", func(b *testing.B) {
			var cur Cursor
			left := 0
			for b.Loop() {
				if left == 0 {
					cur, left = nil, perRP
				}
				l, next, err := s.ListResidents(target, AllResidents, cur, 1)
				if err != nil || len(l) != 1 {
					b.Fatal(err)
				}
				cur, left = next, left-1
			}
		})
	}
	b.Run("byID", func(b *testing.B) {
		i := 0
		for b.Loop() {
			if _, err := s.Resident(seed[i%n].CredentialID); err != nil {
				b.Fatal(err)
			}
			i++
		}
	})
}
