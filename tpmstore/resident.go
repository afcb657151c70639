package tpmstore

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Resident credentials, state layout version 2. Every operation touches
// a bounded number of B+tree entries, so its cost does not grow with the
// number of credentials (docs/tpmstore.md, "Resident credentials"):
//
//	residents      credential ID → JSON residentRecord (unchanged from version 1)
//	resident.idx   rpIdHash ‖ class ‖ ^seq → credential ID
//	               class 0 holds every credential, class 1 only those a
//	               getAssertion without user verification may discover
//	               (credProtect 1); ^seq makes a forward cursor newest first
//	resident.user  rpIdHash ‖ user ID → credential ID (replacement lookup)
//	resident.rp    rpIdHash → JSON rpRecord (ID, name, kept counts)
//	resident.rpid  rpId ‖ 0x00 ‖ rpIdHash → empty (RPs in ID order)
//	meta           resident.count, resident.rps: kept totals (big-endian
//	               uint32); resident.max: the capacity the daemon runs with
var (
	bucketResIndex = []byte("resident.idx")
	bucketResUser  = []byte("resident.user")
	bucketResRP    = []byte("resident.rp")
	bucketResRPID  = []byte("resident.rpid")

	keyResCount = []byte("resident.count")
	keyResRPs   = []byte("resident.rps")
	keyResMax   = []byte("resident.max")
)

// residentBuckets are the buckets a version-2 state holds besides meta.
var residentBuckets = [][]byte{bucketResidents, bucketResIndex, bucketResUser, bucketResRP, bucketResRPID}

const (
	classAll   byte = 0 // every credential of the RP
	classNoUV  byte = 1 // credProtect 1: discoverable without UV
	idxKeySize      = 32 + 1 + 8
)

// ResidentFilter selects which of an RP's resident credentials a listing
// returns.
type ResidentFilter uint8

const (
	// AllResidents lists every credential (credential management).
	AllResidents ResidentFilter = iota
	// ResidentsWithoutUV lists only the credentials a getAssertion
	// without user verification may discover: credProtect 1 (CTAP 2.1
	// §12.1; level 2 needs an allowList, level 3 needs UV).
	ResidentsWithoutUV
)

func (f ResidentFilter) class() byte {
	if f == ResidentsWithoutUV {
		return classNoUV
	}
	return classAll
}

// Cursor is a position in a listing: the list methods return the
// position of the last entry they returned, and a later call continues
// after it. Entries deleted in between are not returned, entries that
// remain are returned exactly once, in order. A nil Cursor is the start.
// Cursors are opaque and only valid for the listing that made them.
type Cursor []byte

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

// withoutUV reports whether a getAssertion without UV may discover it.
func (r *residentRecord) withoutUV() bool { return r.CredProtect <= CredProtectUVOptional }

func (r *residentRecord) hash(id []byte) ([32]byte, error) {
	if len(r.RPIDHash) != 32 {
		return [32]byte{}, fmt.Errorf("%w: resident %x: bad rpIdHash", ErrCorruptState, id)
	}
	return [32]byte(r.RPIDHash), nil
}

func (r *residentRecord) resident(id []byte) (Resident, error) {
	h, err := r.hash(id)
	if err != nil {
		return Resident{}, err
	}
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), r.PublicKey)
	if err != nil {
		return Resident{}, fmt.Errorf("%w: resident %x: %w", ErrCorruptState, id, err)
	}
	return Resident{
		CredentialID: bytes.Clone(id),
		RPID:         r.RPID,
		RPIDHash:     h,
		RPName:       r.RPName,
		User:         User{ID: bytes.Clone(r.UserID), Name: r.UserName, DisplayName: r.UserDisplay},
		PublicKey:    pub,
		CredProtect:  r.CredProtect,
		LargeBlobKey: bytes.Clone(r.LargeBlobKey),
		Created:      time.Unix(0, r.Created),
	}, nil
}

// rpRecord is the on-disk form of an RP with resident credentials.
type rpRecord struct {
	ID        string `json:"id"`
	Name      string `json:"name,omitempty"`
	NameSeq   uint64 `json:"nameSeq"` // seq of the credential Name came from (the newest)
	Count     int    `json:"count"`
	CountNoUV int    `json:"countNoUV"`
}

func (r *rpRecord) rp(hash [32]byte) RP {
	return RP{ID: r.ID, Name: r.Name, Hash: hash, Count: r.Count, CountWithoutUV: r.CountNoUV}
}

func idxKey(hash []byte, class byte, seq uint64) []byte {
	k := make([]byte, 0, idxKeySize)
	k = append(k, hash...)
	k = append(k, class)
	return binary.BigEndian.AppendUint64(k, ^seq)
}

func userKey(hash, userID []byte) []byte {
	return append(append(make([]byte, 0, 32+len(userID)), hash...), userID...)
}

func rpIDKey(id string, hash []byte) []byte {
	k := make([]byte, 0, len(id)+1+32)
	k = append(append(k, id...), 0)
	return append(k, hash...)
}

// resTx is a transaction's view of the resident buckets.
type resTx struct {
	meta, recs, idx, users, rps, rpids *bolt.Bucket
}

func residentTx(tx *bolt.Tx) (*resTx, error) {
	t := &resTx{meta: tx.Bucket(bucketMeta)}
	for _, b := range []struct {
		p    **bolt.Bucket
		name []byte
	}{{&t.recs, bucketResidents}, {&t.idx, bucketResIndex}, {&t.users, bucketResUser}, {&t.rps, bucketResRP}, {&t.rpids, bucketResRPID}} {
		if *b.p = tx.Bucket(b.name); *b.p == nil {
			return nil, fmt.Errorf("%w: bucket %s missing", ErrCorruptState, b.name)
		}
	}
	if t.meta == nil {
		return nil, fmt.Errorf("%w: meta bucket missing", ErrCorruptState)
	}
	return t, nil
}

func (t *resTx) record(id []byte) (*residentRecord, error) {
	v := t.recs.Get(id)
	if v == nil {
		return nil, nil
	}
	var r residentRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("%w: resident %x: %w", ErrCorruptState, id, err)
	}
	if _, err := r.hash(id); err != nil {
		return nil, err
	}
	return &r, nil
}

func (t *resTx) rp(hash []byte) (*rpRecord, error) {
	v := t.rps.Get(hash)
	if v == nil {
		return nil, nil
	}
	var r rpRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("%w: RP %x: %w", ErrCorruptState, hash, err)
	}
	return &r, nil
}

func (t *resTx) putRP(hash []byte, r *rpRecord) error {
	v, err := json.Marshal(r)
	if err != nil {
		return err
	}
	return t.rps.Put(hash, v)
}

// count reads a kept total from meta (0 when absent).
func (t *resTx) count(key []byte) (int, error) {
	v := t.meta.Get(key)
	if v == nil {
		return 0, nil
	}
	if len(v) != 4 {
		return 0, fmt.Errorf("%w: meta %q malformed", ErrCorruptState, key)
	}
	return int(binary.BigEndian.Uint32(v)), nil
}

func (t *resTx) addCount(key []byte, delta int) error {
	n, err := t.count(key)
	if err != nil {
		return err
	}
	if n+delta < 0 {
		return fmt.Errorf("%w: meta %q would go below zero", ErrCorruptState, key)
	}
	return t.meta.Put(key, be32(uint32(n+delta)))
}

// insert stores rec (whose Seq is set) under id with its index entries
// and counts. The caller has made sure neither id nor rec's RP and user
// are stored already.
func (t *resTx) insert(id []byte, rec *residentRecord) error {
	v, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	if err := t.recs.Put(id, v); err != nil {
		return err
	}
	if err := t.index(id, rec); err != nil {
		return err
	}
	return t.addCount(keyResCount, 1)
}

// index adds rec's index entries and RP counts (rec itself is stored).
func (t *resTx) index(id []byte, rec *residentRecord) error {
	h := rec.RPIDHash
	if err := t.idx.Put(idxKey(h, classAll, rec.Seq), id); err != nil {
		return err
	}
	if rec.withoutUV() {
		if err := t.idx.Put(idxKey(h, classNoUV, rec.Seq), id); err != nil {
			return err
		}
	}
	if err := t.users.Put(userKey(h, rec.UserID), id); err != nil {
		return err
	}
	rp, err := t.rp(h)
	if err != nil {
		return err
	}
	if rp == nil {
		rp = &rpRecord{ID: rec.RPID}
		if err := t.rpids.Put(rpIDKey(rec.RPID, h), nil); err != nil {
			return err
		}
		if err := t.addCount(keyResRPs, 1); err != nil {
			return err
		}
	}
	rp.Count++
	if rec.withoutUV() {
		rp.CountNoUV++
	}
	if rec.Seq >= rp.NameSeq {
		rp.Name, rp.NameSeq = rec.RPName, rec.Seq
	}
	return t.putRP(h, rp)
}

// remove deletes the credential id (record rec) with its index entries
// and counts.
func (t *resTx) remove(id []byte, rec *residentRecord) error {
	h := rec.RPIDHash
	if err := t.recs.Delete(id); err != nil {
		return err
	}
	if err := t.idx.Delete(idxKey(h, classAll, rec.Seq)); err != nil {
		return err
	}
	if err := t.idx.Delete(idxKey(h, classNoUV, rec.Seq)); err != nil {
		return err
	}
	uk := userKey(h, rec.UserID)
	if bytes.Equal(t.users.Get(uk), id) {
		if err := t.users.Delete(uk); err != nil {
			return err
		}
	}
	if err := t.addCount(keyResCount, -1); err != nil {
		return err
	}
	rp, err := t.rp(h)
	if err != nil {
		return err
	}
	if rp == nil {
		return fmt.Errorf("%w: resident %x: its RP record is missing", ErrCorruptState, id)
	}
	rp.Count--
	if rec.withoutUV() {
		rp.CountNoUV--
	}
	if rp.Count <= 0 {
		if err := t.rps.Delete(h); err != nil {
			return err
		}
		if err := t.rpids.Delete(rpIDKey(rp.ID, h)); err != nil {
			return err
		}
		return t.addCount(keyResRPs, -1)
	}
	if rec.Seq == rp.NameSeq {
		// The newest credential named the RP; now the next newest does.
		k, v := t.idx.Cursor().Seek(append(bytes.Clone(h), classAll))
		if k == nil || len(k) != idxKeySize || !bytes.Equal(k[:32], h) || k[32] != classAll {
			return fmt.Errorf("%w: RP %x counts %d credentials but has none", ErrCorruptState, h, rp.Count)
		}
		next, err := t.record(v)
		if err != nil {
			return err
		}
		if next == nil {
			return fmt.Errorf("%w: index names a missing resident %x", ErrCorruptState, v)
		}
		rp.Name, rp.NameSeq = next.RPName, next.Seq
	}
	return t.putRP(h, rp)
}

// PutResident stores a discoverable credential, replacing one with the
// same RP and user ID (and one with the same credential ID) in the same
// transaction. The write is fsynced before it returns. ErrStoreFull when
// MaxResidents are stored already.
func (s *Store) PutResident(r Resident) error {
	return s.PutResidents([]Resident{r})
}

// PutResidents stores several discoverable credentials in one fsynced
// transaction, in order, each as PutResident would: all or none. It is
// for seeding a store in tests and benchmarks, and for imports.
func (s *Store) PutResidents(rs []Resident) error {
	recs := make([]residentRecord, len(rs))
	for i, r := range rs {
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
		recs[i] = residentRecord{
			RPID:         r.RPID,
			RPIDHash:     bytes.Clone(r.RPIDHash[:]),
			RPName:       r.RPName,
			UserID:       r.User.ID,
			UserName:     r.User.Name,
			UserDisplay:  r.User.DisplayName,
			PublicKey:    pub,
			CredProtect:  r.CredProtect,
			LargeBlobKey: r.LargeBlobKey,
			Created:      r.Created.UnixNano(),
		}
	}
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	for i, r := range rs {
		if r.Created.IsZero() {
			recs[i].Created = s.now().UnixNano()
		}
	}
	return s.update(func(tx *bolt.Tx) error {
		t, err := residentTx(tx)
		if err != nil {
			return err
		}
		for i := range recs {
			if err := s.putResident(t, rs[i].CredentialID, &recs[i]); err != nil {
				return err
			}
		}
		return nil
	})
}

// putResident is PutResident inside a write transaction.
func (s *Store) putResident(t *resTx, id []byte, rec *residentRecord) error {
	if old, err := t.record(id); err != nil {
		return err
	} else if old != nil {
		if err := t.remove(id, old); err != nil {
			return err
		}
	}
	if oldID := bytes.Clone(t.users.Get(userKey(rec.RPIDHash, rec.UserID))); oldID != nil {
		old, err := t.record(oldID)
		if err != nil {
			return err
		}
		if old == nil {
			return fmt.Errorf("%w: user index names a missing resident %x", ErrCorruptState, oldID)
		}
		if err := t.remove(oldID, old); err != nil {
			return err
		}
	}
	n, err := t.count(keyResCount)
	if err != nil {
		return err
	}
	if n >= s.maxResidents {
		return ErrStoreFull
	}
	if rec.Seq, err = t.recs.NextSequence(); err != nil {
		return err
	}
	return t.insert(id, rec)
}

// view runs fn on the resident buckets in a read transaction.
func (s *Store) viewResidents(fn func(t *resTx) error) error {
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	return s.db.View(func(tx *bolt.Tx) error {
		t, err := residentTx(tx)
		if err != nil {
			return err
		}
		return fn(t)
	})
}

// ListResidents returns up to limit (0: all) resident credentials of one
// RP that pass the filter, newest first, starting after the cursor (nil:
// with the newest), and the cursor of the last one returned (the given
// one when none is). Each call costs one index seek plus one read per
// credential returned, however many the RP has.
func (s *Store) ListResidents(rpIDHash [32]byte, f ResidentFilter, after Cursor, limit int) ([]Resident, Cursor, error) {
	prefix := append(rpIDHash[:], f.class())
	if after != nil && (len(after) != idxKeySize || !bytes.HasPrefix(after, prefix)) {
		return nil, nil, errors.New("tpmstore: ListResidents: cursor from another listing")
	}
	var out []Resident
	next := after
	err := s.viewResidents(func(t *resTx) error {
		c := t.idx.Cursor()
		var k, v []byte
		if after == nil {
			k, v = c.Seek(prefix)
		} else if k, v = c.Seek(after); bytes.Equal(k, after) {
			k, v = c.Next()
		}
		for ; k != nil && bytes.HasPrefix(k, prefix) && (limit <= 0 || len(out) < limit); k, v = c.Next() {
			rec, err := t.record(v)
			if err != nil {
				return err
			}
			if rec == nil {
				return fmt.Errorf("%w: index names a missing resident %x", ErrCorruptState, v)
			}
			r, err := rec.resident(v)
			if err != nil {
				return err
			}
			out = append(out, r)
			next = Cursor(bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return out, next, nil
}

// Residents lists all resident credentials of one RP, newest first.
func (s *Store) Residents(rpIDHash [32]byte) ([]Resident, error) {
	out, _, err := s.ListResidents(rpIDHash, AllResidents, nil, 0)
	return out, err
}

// ListResidentRPs returns up to limit (0: all) RPs that have resident
// credentials, sorted by RP ID, starting after the cursor (nil: the
// first), and the cursor of the last one returned. Name is the one the
// RP's newest credential was made with; the counts are kept, not counted.
func (s *Store) ListResidentRPs(after Cursor, limit int) ([]RP, Cursor, error) {
	var out []RP
	next := after
	err := s.viewResidents(func(t *resTx) error {
		c := t.rpids.Cursor()
		var k []byte
		if after == nil {
			k, _ = c.First()
		} else if k, _ = c.Seek(after); bytes.Equal(k, after) {
			k, _ = c.Next()
		}
		for ; k != nil && (limit <= 0 || len(out) < limit); k, _ = c.Next() {
			if len(k) < 33 {
				return fmt.Errorf("%w: RP index key %x", ErrCorruptState, k)
			}
			h := k[len(k)-32:]
			rp, err := t.rp(h)
			if err != nil {
				return err
			}
			if rp == nil {
				return fmt.Errorf("%w: RP index names a missing RP %x", ErrCorruptState, h)
			}
			out = append(out, rp.rp([32]byte(h)))
			next = Cursor(bytes.Clone(k))
		}
		return nil
	})
	if err != nil {
		return nil, nil, err
	}
	return out, next, nil
}

// ResidentRPs lists every RP that has resident credentials, sorted by ID.
func (s *Store) ResidentRPs() ([]RP, error) {
	out, _, err := s.ListResidentRPs(nil, 0)
	return out, err
}

// ResidentRP returns one RP's record with its kept counts; ErrNotFound
// when it has no resident credentials.
func (s *Store) ResidentRP(rpIDHash [32]byte) (RP, error) {
	var out RP
	err := s.viewResidents(func(t *resTx) error {
		rp, err := t.rp(rpIDHash[:])
		if err != nil {
			return err
		}
		if rp == nil {
			return ErrNotFound
		}
		out = rp.rp(rpIDHash)
		return nil
	})
	return out, err
}

// Resident returns the resident credential with this ID; ErrNotFound if
// absent.
func (s *Store) Resident(credID []byte) (Resident, error) {
	var out Resident
	err := s.viewResidents(func(t *resTx) error {
		rec, err := t.record(credID)
		if err != nil {
			return err
		}
		if rec == nil {
			return ErrNotFound
		}
		out, err = rec.resident(credID)
		return err
	})
	return out, err
}

// ResidentByUser returns the RP's resident credential for a user ID (at
// most one exists: a new one replaces it); ErrNotFound if none.
func (s *Store) ResidentByUser(rpIDHash [32]byte, userID []byte) (Resident, error) {
	var out Resident
	err := s.viewResidents(func(t *resTx) error {
		id := t.users.Get(userKey(rpIDHash[:], userID))
		if id == nil {
			return ErrNotFound
		}
		rec, err := t.record(id)
		if err != nil {
			return err
		}
		if rec == nil {
			return fmt.Errorf("%w: user index names a missing resident %x", ErrCorruptState, id)
		}
		out, err = rec.resident(id)
		return err
	})
	return out, err
}

// DeleteResident deletes one resident credential; ErrNotFound if absent.
// Its credential ID stops opening at once (OpenCredential).
func (s *Store) DeleteResident(credID []byte) error {
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	return s.update(func(tx *bolt.Tx) error {
		t, err := residentTx(tx)
		if err != nil {
			return err
		}
		rec, err := t.record(credID)
		if err != nil {
			return err
		}
		if rec == nil {
			return ErrNotFound
		}
		return t.remove(credID, rec)
	})
}

// UpdateResidentUser replaces the name and display name of a resident
// credential's user; ErrNotFound if absent. u.ID must be the stored user
// ID (CTAP 2.1 §6.8.6 only changes the names).
func (s *Store) UpdateResidentUser(credID []byte, u User) error {
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	return s.update(func(tx *bolt.Tx) error {
		t, err := residentTx(tx)
		if err != nil {
			return err
		}
		rec, err := t.record(credID)
		if err != nil {
			return err
		}
		if rec == nil {
			return ErrNotFound
		}
		if !bytes.Equal(rec.UserID, u.ID) {
			return errors.New("tpmstore: UpdateResidentUser: the user ID cannot change")
		}
		rec.UserName, rec.UserDisplay = u.Name, u.DisplayName
		v, err := json.Marshal(rec)
		if err != nil {
			return err
		}
		return t.recs.Put(credID, v)
	})
}

// ResidentCount returns the number of resident credentials (kept, not
// counted).
func (s *Store) ResidentCount() (int, error) {
	var n int
	err := s.viewResidents(func(t *resTx) (err error) {
		n, err = t.count(keyResCount)
		return err
	})
	return n, err
}

// ResidentRPCount returns the number of RPs with resident credentials
// (kept, not counted).
func (s *Store) ResidentRPCount() (int, error) {
	var n int
	err := s.viewResidents(func(t *resTx) (err error) {
		n, err = t.count(keyResRPs)
		return err
	})
	return n, err
}

// MaxResidents returns the resident credential capacity.
func (s *Store) MaxResidents() int { return s.maxResidents }

// createResidentBuckets makes the empty version-2 resident buckets and
// zero counts (first run, Reset).
func createResidentBuckets(tx *bolt.Tx) error {
	for _, name := range residentBuckets {
		if _, err := tx.CreateBucket(name); err != nil {
			return err
		}
	}
	m := tx.Bucket(bucketMeta)
	return putAll(m, keyResCount, be32(0), keyResRPs, be32(0))
}

// deleteResidentBuckets drops every resident bucket (Reset, migration).
func deleteResidentBuckets(tx *bolt.Tx, names ...[]byte) error {
	for _, name := range names {
		if tx.Bucket(name) == nil {
			continue
		}
		if err := tx.DeleteBucket(name); err != nil {
			return err
		}
	}
	return nil
}

// migrateV1 builds the version-2 indexes and counts over a version-1
// residents bucket (credential ID → the same JSON records), in the
// caller's write transaction, and sets the state version to 2. Records
// and their insertion sequence are kept as they are, so the order and
// every field survive.
func migrateV1(tx *bolt.Tx) (int, error) {
	if tx.Bucket(bucketResidents) == nil {
		return 0, fmt.Errorf("%w: residents bucket missing", ErrCorruptState)
	}
	// Index buckets cannot exist in a version-1 state; a leftover would
	// only come from a foreign tool, and is rebuilt.
	if err := deleteResidentBuckets(tx, bucketResIndex, bucketResUser, bucketResRP, bucketResRPID); err != nil {
		return 0, err
	}
	for _, name := range residentBuckets[1:] {
		if _, err := tx.CreateBucket(name); err != nil {
			return 0, err
		}
	}
	if err := putAll(tx.Bucket(bucketMeta), keyResCount, be32(0), keyResRPs, be32(0)); err != nil {
		return 0, err
	}
	t, err := residentTx(tx)
	if err != nil {
		return 0, err
	}
	n := 0
	err = t.recs.ForEach(func(id, v []byte) error {
		var rec residentRecord
		if err := json.Unmarshal(v, &rec); err != nil {
			return fmt.Errorf("%w: resident %x: %w", ErrCorruptState, id, err)
		}
		if _, err := rec.hash(id); err != nil {
			return err
		}
		// Version 1 replaced by RP and user, so a user has one credential
		// per RP; were there two, the newer one is the one indexed.
		uk := userKey(rec.RPIDHash, rec.UserID)
		prev := bytes.Clone(t.users.Get(uk))
		n++
		if err := t.index(bytes.Clone(id), &rec); err != nil {
			return err
		}
		if prev != nil {
			old, err := t.record(prev)
			if err != nil {
				return err
			}
			if old != nil && old.Seq > rec.Seq {
				return t.users.Put(uk, prev)
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	if err := t.addCount(keyResCount, n); err != nil {
		return 0, err
	}
	return n, t.meta.Put(keyVersion, []byte{stateVersion})
}

// Usage is how much of its resident-credential capacity a state holds.
type Usage struct {
	Residents int // resident credentials
	RPs       int // relying parties they belong to
	Max       int // the capacity the daemon last ran with
	Version   int // state layout version
}

// ReadUsage reads Usage from the state in dir without the TPM and
// without writing (a version-1 state is counted, not upgraded). It fails
// with an error wrapping bbolt's ErrTimeout when another process, such as
// the daemon, holds the state, and with fs.ErrNotExist when there is none.
func ReadUsage(dir string) (Usage, error) {
	path := filepath.Join(dir, stateFile)
	if _, err := os.Stat(path); err != nil {
		return Usage{}, fmt.Errorf("tpmstore: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 500 * time.Millisecond})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return Usage{}, fmt.Errorf("tpmstore: %s is in use by another process: %w", path, err)
		}
		return Usage{}, fmt.Errorf("%w: %s: %w", ErrCorruptState, path, err)
	}
	defer db.Close()
	u := Usage{Max: DefaultMaxResidents}
	err = db.View(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		if m == nil {
			return nil // an empty state: a first start that stopped early
		}
		if v := m.Get(keyVersion); len(v) == 1 {
			u.Version = int(v[0])
		}
		if v := m.Get(keyResMax); len(v) == 4 {
			u.Max = int(binary.BigEndian.Uint32(v))
		}
		if u.Version == 1 {
			recs := tx.Bucket(bucketResidents)
			if recs == nil {
				return fmt.Errorf("%w: residents bucket missing", ErrCorruptState)
			}
			rps := map[string]bool{}
			return recs.ForEach(func(id, v []byte) error {
				var r residentRecord
				if err := json.Unmarshal(v, &r); err != nil {
					return fmt.Errorf("%w: resident %x: %w", ErrCorruptState, id, err)
				}
				u.Residents++
				rps[string(r.RPIDHash)] = true
				u.RPs = len(rps)
				return nil
			})
		}
		t, err := residentTx(tx)
		if err != nil {
			return err
		}
		if u.Residents, err = t.count(keyResCount); err != nil {
			return err
		}
		u.RPs, err = t.count(keyResRPs)
		return err
	})
	return u, err
}
