package u2f_test

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"sync"

	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// fakeStore is a software key store with the methods U2F needs.
type fakeStore struct {
	mu      sync.Mutex
	keys    map[string]fakeKey
	counter uint32
	created int
	signs   int
	failNew error
}

type fakeKey struct {
	rp   [32]byte
	priv *ecdsa.PrivateKey
	opts tpmstore.CredentialOptions
}

func newFakeStore() *fakeStore { return &fakeStore{keys: map[string]fakeKey{}} }

func (s *fakeStore) CreateCredential(rp [32]byte, opts tpmstore.CredentialOptions) (*tpmstore.Credential, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.failNew != nil {
		return nil, s.failNew
	}
	priv, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	id := make([]byte, 80)
	if _, err := rand.Read(id); err != nil {
		return nil, err
	}
	s.keys[string(id)] = fakeKey{rp: rp, priv: priv, opts: opts}
	s.created++
	return &tpmstore.Credential{ID: id, RPIDHash: rp, PublicKey: &priv.PublicKey, Options: opts}, nil
}

func (s *fakeStore) OpenCredential(rp [32]byte, id []byte) (*tpmstore.Credential, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[string(id)]
	if !ok || k.rp != rp {
		return nil, tpmstore.ErrCredentialInvalid
	}
	return &tpmstore.Credential{ID: append([]byte(nil), id...), RPIDHash: rp, PublicKey: &k.priv.PublicKey, Options: k.opts}, nil
}

func (s *fakeStore) Sign(c *tpmstore.Credential, digest []byte) ([]byte, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k, ok := s.keys[string(c.ID)]
	if !ok {
		return nil, errors.New("fake store: unknown credential")
	}
	s.signs++
	return ecdsa.SignASN1(rand.Reader, k.priv, digest)
}

func (s *fakeStore) NextCounter() (uint32, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.counter++
	return s.counter, nil
}

func (s *fakeStore) setCredProtect(id []byte, level uint8) {
	s.mu.Lock()
	defer s.mu.Unlock()
	k := s.keys[string(id)]
	k.opts.CredProtect = level
	s.keys[string(id)] = k
}
