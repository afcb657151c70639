package ctap2test

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"errors"
	"testing"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap/ctap2"
	"github.com/tpm-fido/tpm-fido/tpmstore"
)

var _ ctap2.Store = (*FakeStore)(nil)

func TestFakeStore(t *testing.T) {
	s := NewFakeStore(2)
	rp := sha256.Sum256([]byte("rp"))
	c, err := s.CreateCredential(rp, tpmstore.CredentialOptions{CredProtect: 2})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := s.OpenCredential(sha256.Sum256([]byte("other")), c.ID); !errors.Is(err, tpmstore.ErrCredentialInvalid) {
		t.Errorf("other RP: %v", err)
	}
	o, err := s.OpenCredential(rp, c.ID)
	if err != nil || o.Options.CredProtect != 2 || !o.PublicKey.Equal(c.PublicKey) {
		t.Fatalf("open: %v %+v", err, o)
	}
	d := sha256.Sum256([]byte("msg"))
	sig, err := s.Sign(o, d[:])
	if err != nil || !ecdsa.VerifyASN1(c.PublicKey, d[:], sig) {
		t.Fatalf("sign: %v", err)
	}
	a, _ := s.CredRandom(o, false)
	b, _ := s.CredRandom(o, true)
	if len(a) != 32 || bytes.Equal(a, b) {
		t.Error("CredRandom does not depend on UV")
	}
	n1, _ := s.NextCounter()
	n2, _ := s.NextCounter()
	if n2 <= n1 {
		t.Error("counter not increasing")
	}
	t0 := time.Unix(1000, 0)
	put := func(user string, at time.Time) error {
		return s.PutResident(tpmstore.Resident{CredentialID: []byte(user), RPIDHash: rp, User: tpmstore.User{ID: []byte(user)}, Created: at})
	}
	if err := put("a", t0); err != nil {
		t.Fatal(err)
	}
	if err := put("b", t0.Add(time.Second)); err != nil {
		t.Fatal(err)
	}
	if err := put("c", t0); !errors.Is(err, tpmstore.ErrStoreFull) {
		t.Errorf("third resident: %v", err)
	}
	if err := put("a", t0.Add(2*time.Second)); err != nil {
		t.Errorf("replacing: %v", err)
	}
	rs, _ := s.Residents(rp)
	if len(rs) != 2 || string(rs[0].User.ID) != "a" || string(rs[1].User.ID) != "b" {
		t.Errorf("residents not newest first: %v", rs)
	}
	s.Fail["Sign"] = true
	if _, err := s.Sign(o, d[:]); !errors.Is(err, ErrInjected) {
		t.Errorf("injected: %v", err)
	}
	if err := s.Reset(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.OpenCredential(rp, c.ID); err == nil {
		t.Error("credential survives reset")
	}
}
