package tpmstore

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	bolt "go.etcd.io/bbolt"
)

// residentRecord is the on-disk form of a Resident (JSON, keyed by
// credential ID in the residents bucket).
type residentRecord struct {
	Seq          uint64 `json:"seq"` // insertion order: newest has the highest
	RPID         string `json:"rpId"`
	RPIDHash     []byte `json:"rpIdHash"`
	RPName       string `json:"rpName,omitempty"`
	UserID       []byte `json:"userId"`
	UserName     string `json:"userName,omitempty"`
	UserDisplay  string `json:"userDisplayName,omitempty"`
	PublicKey    []byte `json:"publicKey"` // uncompressed P-256 point
	CredProtect  uint8  `json:"credProtect"`
	LargeBlobKey []byte `json:"largeBlobKey,omitempty"`
	Created      int64  `json:"created"` // Unix nanoseconds
}

func (r *residentRecord) resident(id []byte) (Resident, error) {
	if len(r.RPIDHash) != 32 {
		return Resident{}, fmt.Errorf("%w: resident %x: bad rpIdHash", ErrCorruptState, id)
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), r.PublicKey)
	if err != nil {
		return Resident{}, fmt.Errorf("%w: resident %x: %w", ErrCorruptState, id, err)
	}
	res := Resident{
		CredentialID: bytes.Clone(id),
		RPID:         r.RPID,
		RPName:       r.RPName,
		User:         User{ID: r.UserID, Name: r.UserName, DisplayName: r.UserDisplay},
		PublicKey:    pub,
		CredProtect:  r.CredProtect,
		LargeBlobKey: r.LargeBlobKey,
		Created:      time.Unix(0, r.Created),
	}
	copy(res.RPIDHash[:], r.RPIDHash)
	return res, nil
}

type residentEntry struct {
	id  []byte
	rec residentRecord
}

// allResidents decodes the residents bucket.
func allResidents(tx *bolt.Tx) ([]residentEntry, error) {
	b := tx.Bucket(bucketResidents)
	if b == nil {
		return nil, fmt.Errorf("%w: residents bucket missing", ErrCorruptState)
	}
	var out []residentEntry
	err := b.ForEach(func(k, v []byte) error {
		var r residentRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("%w: resident %x: %w", ErrCorruptState, k, err)
		}
		out = append(out, residentEntry{bytes.Clone(k), r})
		return nil
	})
	return out, err
}

// PutResident stores a discoverable credential, replacing one with the
// same RP and user ID. The write is fsynced before it returns.
// ErrStoreFull when MaxResidents are stored already.
func (s *Store) PutResident(r Resident) error {
	if len(r.CredentialID) == 0 || len(r.CredentialID) > credIDMaxSize {
		return errors.New("tpmstore: PutResident: bad credential ID length")
	}
	if r.PublicKey == nil {
		return errors.New("tpmstore: PutResident: no public key")
	}
	pub, err := r.PublicKey.Bytes()
	if err != nil || r.PublicKey.Curve != elliptic.P256() {
		return fmt.Errorf("tpmstore: PutResident: public key is not a P-256 key: %v", err)
	}
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	created := r.Created
	if created.IsZero() {
		created = s.now()
	}
	rec := residentRecord{
		RPID:         r.RPID,
		RPIDHash:     r.RPIDHash[:],
		RPName:       r.RPName,
		UserID:       r.User.ID,
		UserName:     r.User.Name,
		UserDisplay:  r.User.DisplayName,
		PublicKey:    pub,
		CredProtect:  r.CredProtect,
		LargeBlobKey: r.LargeBlobKey,
		Created:      created.UnixNano(),
	}
	return s.update(func(tx *bolt.Tx) error {
		all, err := allResidents(tx)
		if err != nil {
			return err
		}
		b := tx.Bucket(bucketResidents)
		n := len(all)
		for _, e := range all {
			same := bytes.Equal(e.id, r.CredentialID) ||
				(bytes.Equal(e.rec.RPIDHash, r.RPIDHash[:]) && bytes.Equal(e.rec.UserID, r.User.ID))
			if same {
				if err := b.Delete(e.id); err != nil {
					return err
				}
				n--
			}
		}
		if n >= s.maxResidents {
			return ErrStoreFull
		}
		if rec.Seq, err = b.NextSequence(); err != nil {
			return err
		}
		v, err := json.Marshal(&rec)
		if err != nil {
			return err
		}
		return b.Put(r.CredentialID, v)
	})
}

// Residents lists the resident credentials of one RP, newest first.
func (s *Store) Residents(rpIDHash [32]byte) ([]Resident, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	var out []residentEntry
	err := s.db.View(func(tx *bolt.Tx) error {
		all, err := allResidents(tx)
		for _, e := range all {
			if bytes.Equal(e.rec.RPIDHash, rpIDHash[:]) {
				out = append(out, e)
			}
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	sort.Slice(out, func(i, j int) bool { return out[i].rec.Seq > out[j].rec.Seq })
	res := make([]Resident, 0, len(out))
	for _, e := range out {
		r, err := e.rec.resident(e.id)
		if err != nil {
			return nil, err
		}
		res = append(res, r)
	}
	return res, nil
}

// ResidentRPs lists the RPs that have resident credentials, sorted by ID.
// Name is taken from the RP's newest credential.
func (s *Store) ResidentRPs() ([]RP, error) {
	if err := s.lock(); err != nil {
		return nil, err
	}
	defer s.mu.Unlock()
	type acc struct {
		rp  RP
		seq uint64
	}
	byHash := map[[32]byte]*acc{}
	err := s.db.View(func(tx *bolt.Tx) error {
		all, err := allResidents(tx)
		for _, e := range all {
			if len(e.rec.RPIDHash) != 32 {
				return fmt.Errorf("%w: resident %x: bad rpIdHash", ErrCorruptState, e.id)
			}
			h := [32]byte(e.rec.RPIDHash)
			a := byHash[h]
			if a == nil {
				a = &acc{rp: RP{Hash: h}}
				byHash[h] = a
			}
			a.rp.Count++
			if e.rec.Seq >= a.seq {
				a.seq, a.rp.ID, a.rp.Name = e.rec.Seq, e.rec.RPID, e.rec.RPName
			}
		}
		return err
	})
	if err != nil {
		return nil, err
	}
	out := make([]RP, 0, len(byHash))
	for _, a := range byHash {
		out = append(out, a.rp)
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].ID != out[j].ID {
			return out[i].ID < out[j].ID
		}
		return bytes.Compare(out[i].Hash[:], out[j].Hash[:]) < 0
	})
	return out, nil
}

// DeleteResident deletes one resident credential; ErrNotFound if absent.
func (s *Store) DeleteResident(credID []byte) error {
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketResidents)
		if b == nil {
			return fmt.Errorf("%w: residents bucket missing", ErrCorruptState)
		}
		if b.Get(credID) == nil {
			return ErrNotFound
		}
		return b.Delete(credID)
	})
}

// UpdateResidentUser replaces the user entity of a resident credential;
// ErrNotFound if absent.
func (s *Store) UpdateResidentUser(credID []byte, u User) error {
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	return s.update(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketResidents)
		if b == nil {
			return fmt.Errorf("%w: residents bucket missing", ErrCorruptState)
		}
		v := b.Get(credID)
		if v == nil {
			return ErrNotFound
		}
		var r residentRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("%w: resident %x: %w", ErrCorruptState, credID, err)
		}
		r.UserID, r.UserName, r.UserDisplay = u.ID, u.Name, u.DisplayName
		nv, err := json.Marshal(&r)
		if err != nil {
			return err
		}
		return b.Put(credID, nv)
	})
}

// ResidentCount returns the number of resident credentials.
func (s *Store) ResidentCount() (int, error) {
	if err := s.lock(); err != nil {
		return 0, err
	}
	defer s.mu.Unlock()
	n := 0
	err := s.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(bucketResidents)
		if b == nil {
			return fmt.Errorf("%w: residents bucket missing", ErrCorruptState)
		}
		n = b.Stats().KeyN
		return nil
	})
	return n, err
}

// MaxResidents returns the resident credential capacity.
func (s *Store) MaxResidents() int { return s.maxResidents }
