package ctap2test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"sync"

	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// ResidentList is an in-memory implementation of the resident-credential
// part of ctap2.Store with tpmstore's semantics: one credential per RP
// and user (a new one replaces the old), listings newest first by
// insertion, RPs by ID, cursor pages that skip credentials deleted in
// between and repeat none. Safe for concurrent use; create it with
// NewResidentList.
type ResidentList struct {
	mu   sync.Mutex
	max  int
	seq  uint64
	list []fakeResident // oldest first
}

type fakeResident struct {
	seq uint64
	r   tpmstore.Resident
}

// NewResidentList returns an empty list holding at most max credentials.
func NewResidentList(max int) *ResidentList { return &ResidentList{max: max} }

func noUV(r tpmstore.Resident) bool { return r.CredProtect <= tpmstore.CredProtectUVOptional }

// PutResident stores r, replacing one with the same RP and user ID or
// the same credential ID.
func (s *ResidentList) PutResident(r tpmstore.Resident) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	list := slices.DeleteFunc(slices.Clone(s.list), func(o fakeResident) bool {
		return bytes.Equal(o.r.CredentialID, r.CredentialID) ||
			(o.r.RPIDHash == r.RPIDHash && bytes.Equal(o.r.User.ID, r.User.ID))
	})
	if len(list) >= s.max {
		return tpmstore.ErrStoreFull
	}
	s.seq++
	s.list = append(list, fakeResident{s.seq, r})
	return nil
}

func (s *ResidentList) find(id []byte) int {
	return slices.IndexFunc(s.list, func(o fakeResident) bool { return bytes.Equal(o.r.CredentialID, id) })
}

// Resident returns the credential with this ID; tpmstore.ErrNotFound if
// none.
func (s *ResidentList) Resident(id []byte) (tpmstore.Resident, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if i := s.find(id); i >= 0 {
		return s.list[i].r, nil
	}
	return tpmstore.Resident{}, tpmstore.ErrNotFound
}

// ResidentByUser returns the RP's credential for userID.
func (s *ResidentList) ResidentByUser(rpIDHash [32]byte, userID []byte) (tpmstore.Resident, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, o := range s.list {
		if o.r.RPIDHash == rpIDHash && bytes.Equal(o.r.User.ID, userID) {
			return o.r, nil
		}
	}
	return tpmstore.Resident{}, tpmstore.ErrNotFound
}

// rps returns the RPs sorted by ID, counted.
func (s *ResidentList) rps() []tpmstore.RP {
	idx := map[[32]byte]int{}
	var out []tpmstore.RP
	for _, o := range s.list { // oldest first: the last name seen is the newest
		i, ok := idx[o.r.RPIDHash]
		if !ok {
			i = len(out)
			idx[o.r.RPIDHash] = i
			out = append(out, tpmstore.RP{ID: o.r.RPID, Hash: o.r.RPIDHash})
		}
		out[i].Name = o.r.RPName
		out[i].Count++
		if noUV(o.r) {
			out[i].CountWithoutUV++
		}
	}
	slices.SortFunc(out, func(a, b tpmstore.RP) int {
		return bytes.Compare(rpKey(a), rpKey(b))
	})
	return out
}

func rpKey(rp tpmstore.RP) []byte { return append(append([]byte(rp.ID), 0), rp.Hash[:]...) }

// ResidentRP returns one RP with its counts; tpmstore.ErrNotFound when it
// has no credentials.
func (s *ResidentList) ResidentRP(rpIDHash [32]byte) (tpmstore.RP, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rp := range s.rps() {
		if rp.Hash == rpIDHash {
			return rp, nil
		}
	}
	return tpmstore.RP{}, tpmstore.ErrNotFound
}

var errCursor = errors.New("ctap2test: cursor from another listing")

// ListResidents pages through one RP's credentials, newest first.
func (s *ResidentList) ListResidents(rpIDHash [32]byte, f tpmstore.ResidentFilter, after tpmstore.Cursor, limit int) ([]tpmstore.Resident, tpmstore.Cursor, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	prefix := append(rpIDHash[:], byte(f))
	below := ^uint64(0)
	if after != nil {
		if len(after) != len(prefix)+8 || !bytes.HasPrefix(after, prefix) {
			return nil, nil, errCursor
		}
		below = binary.BigEndian.Uint64(after[len(prefix):])
	}
	var out []tpmstore.Resident
	next := after
	for i := len(s.list) - 1; i >= 0 && (limit <= 0 || len(out) < limit); i-- {
		o := s.list[i]
		if o.seq >= below || o.r.RPIDHash != rpIDHash || (f == tpmstore.ResidentsWithoutUV && !noUV(o.r)) {
			continue
		}
		out = append(out, o.r)
		next = binary.BigEndian.AppendUint64(bytes.Clone(prefix), o.seq)
	}
	return out, next, nil
}

// ListResidentRPs pages through the RPs in ID order.
func (s *ResidentList) ListResidentRPs(after tpmstore.Cursor, limit int) ([]tpmstore.RP, tpmstore.Cursor, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []tpmstore.RP
	next := after
	for _, rp := range s.rps() {
		k := rpKey(rp)
		if after != nil && bytes.Compare(k, after) <= 0 {
			continue
		}
		if limit > 0 && len(out) >= limit {
			break
		}
		out = append(out, rp)
		next = k
	}
	return out, next, nil
}

// Residents lists one RP's credentials, newest first (for tests).
func (s *ResidentList) Residents(rpIDHash [32]byte) ([]tpmstore.Resident, error) {
	out, _, err := s.ListResidents(rpIDHash, tpmstore.AllResidents, nil, 0)
	return out, err
}

// ResidentRPs lists the RPs in ID order (for tests).
func (s *ResidentList) ResidentRPs() ([]tpmstore.RP, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rps(), nil
}

// DeleteResident deletes a credential.
func (s *ResidentList) DeleteResident(id []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.find(id)
	if i < 0 {
		return tpmstore.ErrNotFound
	}
	s.list = slices.Delete(s.list, i, i+1)
	return nil
}

// UpdateResidentUser replaces a credential's user names; the ID must
// stay the same.
func (s *ResidentList) UpdateResidentUser(id []byte, u tpmstore.User) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	i := s.find(id)
	if i < 0 {
		return tpmstore.ErrNotFound
	}
	if !bytes.Equal(s.list[i].r.User.ID, u.ID) {
		return errors.New("ctap2test: the user ID cannot change")
	}
	s.list[i].r.User = u
	return nil
}

// ResidentCount returns the number of credentials.
func (s *ResidentList) ResidentCount() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.list), nil
}

// ResidentRPCount returns the number of RPs with credentials.
func (s *ResidentList) ResidentRPCount() (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.rps()), nil
}

// MaxResidents returns the capacity.
func (s *ResidentList) MaxResidents() int { return s.max }

// Clear forgets every credential.
func (s *ResidentList) Clear() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.list = nil
}
