package cose

import (
	"bytes"
	"crypto/ecdh"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"testing"

	"github.com/fxamacker/cbor/v2"

	"github.com/tpm-fido/tpm-fido/ctap"
)

func TestRoundTrip(t *testing.T) {
	for i := 0; i < 20; i++ {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		b, err := EncodeES256(&k.PublicKey)
		if err != nil {
			t.Fatal(err)
		}
		got, err := DecodeES256(b)
		if err != nil {
			t.Fatal(err)
		}
		if !got.Equal(&k.PublicKey) {
			t.Fatal("decoded key differs")
		}
		// Independent check of the wire form: a generic map with the
		// labels CTAP requires, and canonical key order.
		var m map[int64]any
		if err := cbor.Unmarshal(b, &m); err != nil {
			t.Fatal(err)
		}
		if m[1] != uint64(2) || m[3] != int64(-7) || m[-1] != uint64(1) ||
			len(m[-2].([]byte)) != 32 || len(m[-3].([]byte)) != 32 || len(m) != 5 {
			t.Fatalf("unexpected COSE map %v", m)
		}
		if !bytes.Equal(b[:7], []byte{0xa5, 0x01, 0x02, 0x03, 0x26, 0x20, 0x01}) {
			t.Fatalf("not canonical: % x", b[:7])
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good, _ := EncodeES256(&k.PublicKey)
	var m map[int64]any
	_ = cbor.Unmarshal(good, &m)
	mod := func(f func(map[int64]any)) []byte {
		c := map[int64]any{}
		for k, v := range m {
			c[k] = v
		}
		f(c)
		b, _ := cbor.Marshal(c)
		return b
	}
	offCurve := append([]byte(nil), m[-3].([]byte)...)
	offCurve[31] ^= 1
	cases := map[string][]byte{
		"garbage":   {0xff, 0x00},
		"empty":     nil,
		"wrong kty": mod(func(c map[int64]any) { c[1] = 1 }),
		"wrong alg": mod(func(c map[int64]any) { c[3] = -8 }),
		"wrong crv": mod(func(c map[int64]any) { c[-1] = 2 }),
		"short x":   mod(func(c map[int64]any) { c[-2] = []byte{1} }),
		"off curve": mod(func(c map[int64]any) { c[-3] = offCurve }),
		"x as text": mod(func(c map[int64]any) { c[-2] = "x" }),
		"trailing":  append(append([]byte(nil), good...), 0),
	}
	for name, b := range cases {
		if _, err := DecodeES256(b); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("%s: err = %v, want ErrInvalidKey", name, err)
		}
	}
	if _, err := EncodeES256(nil); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("nil key: %v", err)
	}
}

// TestKeyAgreementKey: the same Key type carries the PIN/UV protocols'
// key-agreement keys (alg -25), and back to an ECDH key.
func TestKeyAgreementKey(t *testing.T) {
	priv, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ECDHES(priv.PublicKey())
	if err != nil {
		t.Fatal(err)
	}
	b, err := ctap.EncodeCBOR(k)
	if err != nil {
		t.Fatal(err)
	}
	var m map[int64]any
	if err := cbor.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if m[1] != uint64(2) || m[3] != int64(-25) || m[-1] != uint64(1) || len(m) != 5 {
		t.Fatalf("key-agreement COSE map %v", m)
	}
	if !bytes.Equal(append(append([]byte{4}, m[-2].([]byte)...), m[-3].([]byte)...), priv.PublicKey().Bytes()) {
		t.Fatal("coordinates differ from the point")
	}
	pub, err := k.ECDH()
	if err != nil || !pub.Equal(priv.PublicKey()) {
		t.Fatalf("ECDH() = %v, %v", pub, err)
	}
	// A key-agreement key is not an ES256 credential key.
	if _, err := k.ECDSA(); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("ECDSA() of an alg -25 key: %v", err)
	}
	off := k
	off.Y = append([]byte(nil), k.Y...)
	off.Y[31] ^= 1
	for name, bad := range map[string]Key{
		"off curve": off,
		"wrong kty": {Kty: 1, Alg: -25, Crv: 1, X: k.X, Y: k.Y},
		"wrong crv": {Kty: 2, Alg: -25, Crv: 2, X: k.X, Y: k.Y},
		"short x":   {Kty: 2, Alg: -25, Crv: 1, X: k.X[:31], Y: k.Y},
		"no y":      {Kty: 2, Alg: -25, Crv: 1, X: k.X},
	} {
		if _, err := bad.ECDH(); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("%s: ECDH() err = %v, want ErrInvalidKey", name, err)
		}
	}
	if _, err := ECDHES(nil); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("ECDHES(nil): %v", err)
	}
	if _, err := ES256(nil); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("ES256(nil): %v", err)
	}
}

// FuzzDecodeES256 checks that any input either fails with ErrInvalidKey
// or decodes to a key that re-encodes and decodes to the same key.
func FuzzDecodeES256(f *testing.F) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	good, _ := EncodeES256(&k.PublicKey)
	f.Add(good)
	f.Add([]byte{0xa0})
	f.Fuzz(func(t *testing.T, b []byte) {
		pub, err := DecodeES256(b)
		if err != nil {
			if !errors.Is(err, ErrInvalidKey) {
				t.Fatalf("error does not wrap ErrInvalidKey: %v", err)
			}
			return
		}
		again, err := EncodeES256(pub)
		if err != nil {
			t.Fatal(err)
		}
		pub2, err := DecodeES256(again)
		if err != nil || !pub2.Equal(pub) {
			t.Fatalf("round trip: %v", err)
		}
	})
}
