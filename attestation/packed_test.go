package attestation

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"errors"
	"testing"

	"github.com/fxamacker/cbor/v2"
)

func TestPackedSelf(t *testing.T) {
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	authData := bytes.Repeat([]byte{0xAD}, 37)
	cdh := sha256.Sum256([]byte("client data"))
	st, err := PackedSelf(authData, cdh[:], func(d []byte) ([]byte, error) {
		return ecdsa.SignASN1(rand.Reader, k, d)
	})
	if err != nil {
		t.Fatal(err)
	}
	// Independent verification over the concatenation.
	want := sha256.Sum256(append(append([]byte(nil), authData...), cdh[:]...))
	if !ecdsa.VerifyASN1(&k.PublicKey, want[:], st.Sig) {
		t.Fatal("signature does not verify over authData‖clientDataHash")
	}
	if err := VerifyPackedSelf(&k.PublicKey, authData, cdh[:], st); err != nil {
		t.Fatal(err)
	}
	other := cdh
	other[0] ^= 1
	if err := VerifyPackedSelf(&k.PublicKey, authData, other[:], st); !errors.Is(err, ErrBadSignature) {
		t.Fatalf("tampered clientDataHash: %v", err)
	}
	// Canonical encoding: {"alg": -7, "sig": h'..'} with alg first.
	em, _ := cbor.CTAP2EncOptions().EncMode()
	b, err := em.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.HasPrefix(b, []byte{0xa2, 0x63, 'a', 'l', 'g', 0x26, 0x63, 's', 'i', 'g'}) {
		t.Fatalf("unexpected encoding % x", b[:10])
	}
}

func TestPackedSelfSignError(t *testing.T) {
	boom := errors.New("tpm gone")
	_, err := PackedSelf(nil, nil, func([]byte) ([]byte, error) { return nil, boom })
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v", err)
	}
}
