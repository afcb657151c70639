package tpmstore

import (
	"errors"
	"testing"
	"time"

	"github.com/tpm-fido/tpm-fido/tpmstore/tpmtest"
)

// A deleted (or replaced) discoverable credential must stop working even
// when a client still holds its ID, as on a key that erases the private
// key; a non-resident credential is unaffected by the residents table.
func TestDeletedResidentIsRevoked(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			s := openStore(t, tpmtest.NewCountingTPM(b.open(t)), t.TempDir())
			rp := rpHash("example.org")
			c, err := s.CreateCredential(rp, CredentialOptions{CredProtect: 1, Resident: true})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.OpenCredential(rp, c.ID); !errors.Is(err, ErrCredentialInvalid) {
				t.Fatalf("resident credential never stored: OpenCredential = %v, want ErrCredentialInvalid", err)
			}
			if err := s.PutResident(testResident(t, c, "alice", time.Now())); err != nil {
				t.Fatal(err)
			}
			if _, err := s.OpenCredential(rp, c.ID); err != nil {
				t.Fatalf("stored resident credential: %v", err)
			}

			// Replacing alice's credential with a new one kills the old ID.
			c2, err := s.CreateCredential(rp, CredentialOptions{CredProtect: 1, Resident: true})
			if err != nil {
				t.Fatal(err)
			}
			if err := s.PutResident(testResident(t, c2, "alice", time.Now())); err != nil {
				t.Fatal(err)
			}
			if _, err := s.OpenCredential(rp, c.ID); !errors.Is(err, ErrCredentialInvalid) {
				t.Fatalf("replaced credential: OpenCredential = %v, want ErrCredentialInvalid", err)
			}

			if err := s.DeleteResident(c2.ID); err != nil {
				t.Fatal(err)
			}
			if _, err := s.OpenCredential(rp, c2.ID); !errors.Is(err, ErrCredentialInvalid) {
				t.Fatalf("deleted credential: OpenCredential = %v, want ErrCredentialInvalid", err)
			}

			plain, err := s.CreateCredential(rp, CredentialOptions{CredProtect: 1})
			if err != nil {
				t.Fatal(err)
			}
			if _, err := s.OpenCredential(rp, plain.ID); err != nil {
				t.Fatalf("non-resident credential: %v", err)
			}
		})
	}
}
