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

// eachBackend runs f as a subtest on every TPM backend, with a new
// state directory and the store open on it.
func eachBackend(t *testing.T, f func(t *testing.T, tpm transport.TPM, dir string, s *Store)) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			tpm := b.open(t)
			dir := t.TempDir()
			f(t, tpm, dir, openStore(t, tpm, dir))
		})
	}
}

// closedState makes a new state on the simulator and closes it, for tests
// that alter the database file: the TPM, the directory and the file.
func closedState(t *testing.T) (tpm transport.TPM, dir, path string) {
	t.Helper()
	tpm = openSimulator(t)
	dir = t.TempDir()
	openStore(t, tpm, dir).Close()
	return tpm, dir, StatePath(dir)
}

// nextCounterAbove takes the next signature counter value, which must be
// above last; what says where, in the failure.
func nextCounterAbove(t testing.TB, s *Store, last uint32, what string) uint32 {
	t.Helper()
	c, err := s.NextCounter()
	if err != nil {
		t.Fatalf("%s: %v", what, err)
	}
	if c <= last {
		t.Fatalf("%s: counter %d, not above %d", what, c, last)
	}
	return c
}

// signVerify signs a digest of msg with c and verifies the signature
// with c's public key.
func signVerify(t testing.TB, s *Store, c *Credential, msg, what string) {
	t.Helper()
	d := sha256.Sum256([]byte(msg))
	sig, err := s.Sign(c, d[:])
	if err != nil {
		t.Fatalf("%s: Sign: %v", what, err)
	}
	if !ecdsa.VerifyASN1(c.PublicKey, d[:], sig) {
		t.Fatalf("%s: the signature does not verify with the credential's public key", what)
	}
}

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
			signVerify(t, s, c, "attestation", "new credential")
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
