package tpmstore

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tpm-fido/tpm-fido/tpmstore/tpmtest"
)

func openStore(t testing.TB, tpm transport.TPM, dir string) *Store {
	t.Helper()
	s, err := Open(Config{TPM: tpm, Dir: dir})
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s
}

func rpHash(rp string) [32]byte { return sha256.Sum256([]byte(rp)) }

func TestCredentialRoundTrip(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			tpm := tpmtest.NewCountingTPM(b.open(t))
			s := openStore(t, tpm, t.TempDir())
			rp := rpHash("example.org")
			c, err := s.CreateCredential(rp, CredentialOptions{CredProtect: 2, HMACSecret: true})
			if err != nil {
				t.Fatalf("CreateCredential: %v", err)
			}
			t.Logf("credential ID: %d bytes", len(c.ID))
			if len(c.ID) > 255 {
				t.Fatalf("credential ID %d bytes > 255", len(c.ID))
			}
			d := sha256.Sum256([]byte("attestation"))
			sig, err := s.Sign(c, d[:])
			if err != nil {
				t.Fatalf("Sign: %v", err)
			}
			if !ecdsa.VerifyASN1(c.PublicKey, d[:], sig) {
				t.Fatal("signature does not verify with the returned public key")
			}
			o, err := s.OpenCredential(rp, c.ID)
			if err != nil {
				t.Fatalf("OpenCredential: %v", err)
			}
			if !o.PublicKey.Equal(c.PublicKey) || o.Options != (CredentialOptions{CredProtect: 2, HMACSecret: true}) {
				t.Fatalf("opened credential differs: %+v", o.Options)
			}
			r1, err := s.CredRandom(o, false)
			if err != nil {
				t.Fatal(err)
			}
			r2, err := s.CredRandom(o, true)
			if err != nil {
				t.Fatal(err)
			}
			r1b, _ := s.CredRandom(c, false)
			if len(r1) != 32 || bytes.Equal(r1, r2) || !bytes.Equal(r1, r1b) {
				t.Fatalf("CredRandom: uv=false %x uv=true %x again %x", r1, r2, r1b)
			}
			// Another RP: rejected with zero TPM commands.
			tpm.Reset()
			if _, err := s.OpenCredential(rpHash("evil.example"), c.ID); !errors.Is(err, ErrCredentialInvalid) {
				t.Fatalf("other RP: err = %v, want ErrCredentialInvalid", err)
			}
			if n := tpm.Total(); n != 0 {
				t.Fatalf("other RP cost %d TPM commands, want 0", n)
			}
			// Every single-bit flip is rejected.
			for i := range len(c.ID) * 8 {
				id := bytes.Clone(c.ID)
				id[i/8] ^= 1 << (i % 8)
				if _, err := s.OpenCredential(rp, id); !errors.Is(err, ErrCredentialInvalid) {
					t.Fatalf("bit %d flipped: err = %v", i, err)
				}
			}
			if n := tpm.Total(); n != 0 {
				t.Fatalf("bit flips cost %d TPM commands, want 0", n)
			}
			for _, id := range [][]byte{nil, {1}, bytes.Repeat([]byte{1}, 300), c.ID[:len(c.ID)-1]} {
				if _, err := s.OpenCredential(rp, id); !errors.Is(err, ErrCredentialInvalid) {
					t.Fatalf("id len %d: err = %v", len(id), err)
				}
			}
			if _, err := s.Sign(c, []byte("short")); err == nil {
				t.Fatal("Sign accepted a 5-byte digest")
			}
		})
	}
}
