package tpmstore

import (
	"bytes"
	"cmp"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"time"

	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Resident credentials, state layout version 3. Every operation touches
// a bounded number of B+tree entries, so its cost does not grow with the
// number of credentials (docs/tpmstore.md, "Resident credentials"):
//
//	resident.idx   rpIdHash ‖ 0 ‖ seq → JSON residentRecord: the records
//	               themselves in insertion order, read newest first by a
//	               cursor walking back from the end of the RP's range
//	               rpIdHash ‖ 1 ‖ seq → ∅ for the credentials a
//	               getAssertion without user verification may discover
//	               (credProtect 1); their record is at class 0
//	resident.id    credential ID → its class-0 key (revocation check,
//	               lookup by ID)
//	resident.user  rpIdHash ‖ user ID → its class-0 key (replacement)
//	resident.rp    rpIdHash → JSON rpRecord (ID, name, kept counts)
//	resident.rpid  rpId ‖ 0x00 ‖ rpIdHash → ∅ (RPs in ID order)
//	meta           resident.count, resident.rps: kept totals (big-endian
//	               uint32); resident.max: the capacity the daemon runs with
//
// Versions 1 and 2 kept the records in "residents", keyed by credential
// ID (version 2 with indexes holding IDs); Open rebuilds version 3 from
// those records (upgradeResidents).
var (
	bucketResIndex = []byte("resident.idx")
	bucketResID    = []byte("resident.id")
	bucketResUser  = []byte("resident.user")
	bucketResRP    = []byte("resident.rp")
	bucketResRPID  = []byte("resident.rpid")

	keyResCount = []byte("resident.count")
	keyResRPs   = []byte("resident.rps")
	keyResMax   = []byte("resident.max")
)

// residentBuckets are the buckets a version-3 state holds besides meta.
var residentBuckets = [][]byte{bucketResIndex, bucketResID, bucketResUser, bucketResRP, bucketResRPID}

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

// residentRecord is the on-disk form of a Resident (JSON, at its class-0
// index key; versions 1 and 2 keyed it by credential ID and had no id).
type residentRecord struct {
	ID           []byte `json:"id,omitempty"` // credential ID
	Seq          uint64 `json:"seq"`          // insertion order: newest has the highest
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

func (r *residentRecord) check() error {
	if len(r.RPIDHash) != 32 || len(r.ID) == 0 {
		return fmt.Errorf("%w: resident %x: bad rpIdHash or ID", ErrCorruptState, r.ID)
	}
	return nil
}

// key is the record's class-0 index key.
func (r *residentRecord) key() []byte { return idxKey(r.RPIDHash, classAll, r.Seq) }

func (r *residentRecord) resident() (Resident, error) {
	pub, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), r.PublicKey)
	if err != nil {
		return Resident{}, fmt.Errorf("%w: resident %x: %w", ErrCorruptState, r.ID, err)
	}
	return Resident{
		CredentialID: bytes.Clone(r.ID),
		RPID:         r.RPID,
		RPIDHash:     [32]byte(r.RPIDHash),
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
	return binary.BigEndian.AppendUint64(k, seq)
}

// newestBefore positions c on the newest entry of the range prefix that
// is older than the entry at after (nil: the newest of the range, else
// the key of an entry returned before, which may have been deleted since)
// and returns it; the caller checks the prefix and walks on with Prev.
// Keys within a range grow with the insertion sequence, so new entries
// go at the end of their range and bbolt fills its pages in order.
func newestBefore(c *bolt.Cursor, prefix []byte, after []byte) (k, v []byte) {
	if after == nil {
		after = binary.BigEndian.AppendUint64(bytes.Clone(prefix), ^uint64(0)) // above every sequence
	}
	if k, _ := c.Seek(after); k == nil {
		return c.Last()
	}
	return c.Prev()
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
	meta, idx, ids, users, rps, rpids *bolt.Bucket
}

func residentTx(tx *bolt.Tx) (*resTx, error) {
	t := &resTx{meta: tx.Bucket(bucketMeta)}
	for _, b := range []struct {
		p    **bolt.Bucket
		name []byte
	}{{&t.idx, bucketResIndex}, {&t.ids, bucketResID}, {&t.users, bucketResUser}, {&t.rps, bucketResRP}, {&t.rpids, bucketResRPID}} {
		if *b.p = tx.Bucket(b.name); *b.p == nil {
			return nil, fmt.Errorf("%w: bucket %s missing", ErrCorruptState, b.name)
		}
	}
	if t.meta == nil {
		return nil, fmt.Errorf("%w: meta bucket missing", ErrCorruptState)
	}
	// New records go at the end of their RP's range, so pages split when
	// full are left nearly full rather than half (bbolt's default, which
	// suits random inserts).
	t.idx.FillPercent = idxFillPercent
	return t, nil
}

// idxFillPercent is how full bbolt leaves the record pages it splits.
const idxFillPercent = 0.9

// decode parses a record stored at index key k.
func decodeRecord(k, v []byte) (*residentRecord, error) {
	var r residentRecord
	if err := json.Unmarshal(v, &r); err != nil {
		return nil, fmt.Errorf("%w: resident at %x: %w", ErrCorruptState, k, err)
	}
	if err := r.check(); err != nil {
		return nil, err
	}
	if !bytes.Equal(r.key(), k) {
		return nil, fmt.Errorf("%w: resident %x stored at %x", ErrCorruptState, r.ID, k)
	}
	return &r, nil
}

// at returns the record at class-0 key k; an index entry without its
// record is damage.
func (t *resTx) at(k []byte) (*residentRecord, error) {
	v := t.idx.Get(k)
	if v == nil {
		return nil, fmt.Errorf("%w: no resident at %x", ErrCorruptState, k)
	}
	return decodeRecord(k, v)
}

// record returns the credential id's record, nil if there is none.
func (t *resTx) record(id []byte) (*residentRecord, error) {
	k := t.ids.Get(id)
	if k == nil {
		return nil, nil
	}
	r, err := t.at(k)
	if err != nil {
		return nil, err
	}
	if !bytes.Equal(r.ID, id) {
		return nil, fmt.Errorf("%w: ID index of %x names resident %x", ErrCorruptState, id, r.ID)
	}
	return r, nil
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

func (t *resTx) putRecord(rec *residentRecord) error {
	v, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	return t.idx.Put(rec.key(), v)
}

// insert stores rec (ID and Seq set) with its index entries and counts.
// The caller has made sure neither its ID nor its RP and user are stored
// already.
func (t *resTx) insert(rec *residentRecord) error {
	h, k := rec.RPIDHash, rec.key()
	if err := t.putRecord(rec); err != nil {
		return err
	}
	if rec.withoutUV() {
		if err := t.idx.Put(idxKey(h, classNoUV, rec.Seq), nil); err != nil {
			return err
		}
	}
	if err := t.ids.Put(rec.ID, k); err != nil {
		return err
	}
	if err := t.users.Put(userKey(h, rec.UserID), k); err != nil {
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
	if err := t.putRP(h, rp); err != nil {
		return err
	}
	return t.addCount(keyResCount, 1)
}

// remove deletes rec with its index entries and counts.
func (t *resTx) remove(rec *residentRecord) error {
	h, k := rec.RPIDHash, rec.key()
	if err := t.idx.Delete(k); err != nil {
		return err
	}
	if err := t.idx.Delete(idxKey(h, classNoUV, rec.Seq)); err != nil {
		return err
	}
	if err := t.ids.Delete(rec.ID); err != nil {
		return err
	}
	uk := userKey(h, rec.UserID)
	if bytes.Equal(t.users.Get(uk), k) {
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
		return fmt.Errorf("%w: resident %x: its RP record is missing", ErrCorruptState, rec.ID)
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
		prefix := append(bytes.Clone(h), classAll)
		k, v := newestBefore(t.idx.Cursor(), prefix, nil)
		if k == nil || !bytes.HasPrefix(k, prefix) {
			return fmt.Errorf("%w: RP %x counts %d credentials but has none", ErrCorruptState, h, rp.Count)
		}
		next, err := decodeRecord(k, v)
		if err != nil {
			return err
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
			ID:           bytes.Clone(r.CredentialID),
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
			if err := s.putResident(t, &recs[i]); err != nil {
				return err
			}
		}
		return nil
	})
}

// putResident is PutResident inside a write transaction.
func (s *Store) putResident(t *resTx, rec *residentRecord) error {
	if old, err := t.record(rec.ID); err != nil {
		return err
	} else if old != nil {
		if err := t.remove(old); err != nil {
			return err
		}
	}
	if k := bytes.Clone(t.users.Get(userKey(rec.RPIDHash, rec.UserID))); k != nil {
		old, err := t.at(k)
		if err != nil {
			return err
		}
		if err := t.remove(old); err != nil {
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
	if rec.Seq, err = t.idx.NextSequence(); err != nil {
		return err
	}
	return t.insert(rec)
}

// viewResidents runs fn on the resident buckets in a read transaction.
func (s *Store) viewResidents(fn func(t *resTx) error) error {
	if err := s.lock(); err != nil {
		return err
	}
	defer s.mu.Unlock()
	return s.view(func(tx *bolt.Tx) error {
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
		for k, v := newestBefore(c, prefix, after); k != nil && bytes.HasPrefix(k, prefix) && (limit <= 0 || len(out) < limit); k, v = c.Prev() {
			var rec *residentRecord
			var err error
			if k[32] == classAll {
				rec, err = decodeRecord(k, v)
			} else {
				rec, err = t.at(append(append(bytes.Clone(k[:32]), classAll), k[33:]...))
			}
			if err != nil {
				return err
			}
			r, err := rec.resident()
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
		out, err = rec.resident()
		return err
	})
	return out, err
}

// ResidentByUser returns the RP's resident credential for a user ID (at
// most one exists: a new one replaces it); ErrNotFound if none.
func (s *Store) ResidentByUser(rpIDHash [32]byte, userID []byte) (Resident, error) {
	var out Resident
	err := s.viewResidents(func(t *resTx) error {
		k := t.users.Get(userKey(rpIDHash[:], userID))
		if k == nil {
			return ErrNotFound
		}
		rec, err := t.at(k)
		if err != nil {
			return err
		}
		out, err = rec.resident()
		return err
	})
	return out, err
}

// DeleteResident deletes one resident credential; ErrNotFound if absent.
// Its credential ID stops opening at once (OpenCredential).
func (s *Store) DeleteResident(credID []byte) error {
	return s.updateRecord(credID, func(t *resTx, rec *residentRecord) error {
		return t.remove(rec)
	})
}

// UpdateResidentUser replaces the name and display name of a resident
// credential's user; ErrNotFound if absent. u.ID must be the stored user
// ID (CTAP 2.1 §6.8.6 only changes the names).
func (s *Store) UpdateResidentUser(credID []byte, u User) error {
	return s.updateRecord(credID, func(t *resTx, rec *residentRecord) error {
		if !bytes.Equal(rec.UserID, u.ID) {
			return errors.New("tpmstore: UpdateResidentUser: the user ID cannot change")
		}
		rec.UserName, rec.UserDisplay = u.Name, u.DisplayName
		return t.putRecord(rec)
	})
}

// updateRecord runs fn on the record of credID in a write transaction;
// ErrNotFound if there is none.
func (s *Store) updateRecord(credID []byte, fn func(t *resTx, rec *residentRecord) error) error {
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
		return fn(t, rec)
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

// createResidentBuckets makes the empty version-3 resident buckets and
// zero counts (first run, Reset, upgrade).
func createResidentBuckets(tx *bolt.Tx) error {
	for _, name := range residentBuckets {
		if _, err := tx.CreateBucket(name); err != nil {
			return err
		}
	}
	m := tx.Bucket(bucketMeta)
	return putAll(m, keyResCount, be32(0), keyResRPs, be32(0))
}

// deleteResidentBuckets drops the named buckets that exist.
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

// upgradeResidents rebuilds the resident buckets of a version-1 or -2
// state as version 3, in the caller's write transaction: the records are
// read from "residents" (credential ID → JSON record, the same in both),
// stored at their index keys with their insertion sequence, order and
// every field as they were, and every index and count is built anew;
// the old buckets are dropped and the version set to 3. It returns how
// many credentials it moved.
func upgradeResidents(tx *bolt.Tx) (int, error) {
	old := tx.Bucket(bucketResidents)
	if old == nil {
		return 0, fmt.Errorf("%w: residents bucket missing", ErrCorruptState)
	}
	var recs []*residentRecord
	err := old.ForEach(func(id, v []byte) error {
		var r residentRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("%w: resident %x: %w", ErrCorruptState, id, err)
		}
		r.ID = bytes.Clone(id)
		if err := r.check(); err != nil {
			return err
		}
		recs = append(recs, &r)
		return nil
	})
	if err != nil {
		return 0, err
	}
	seq := old.Sequence()
	// Version 1 had the records alone; version 2 indexes of IDs, in
	// buckets of the names version 3 uses (all rebuilt), but no
	// resident.id, which is dropped too should one be there.
	if err := deleteResidentBuckets(tx, append([][]byte{bucketResidents}, residentBuckets...)...); err != nil {
		return 0, err
	}
	if err := createResidentBuckets(tx); err != nil {
		return 0, err
	}
	t, err := residentTx(tx)
	if err != nil {
		return 0, err
	}
	// Oldest first, so that a user with two credentials (which
	// replacement never left, but were there two) keeps the newer in the
	// user index (insert overwrites its entry), and the RP names come out
	// as the live code sets them.
	slices.SortFunc(recs, func(a, b *residentRecord) int { return cmp.Compare(a.Seq, b.Seq) })
	for i, r := range recs {
		if i > 0 && r.Seq == recs[i-1].Seq {
			return 0, fmt.Errorf("%w: residents %x and %x share insertion sequence %d", ErrCorruptState, recs[i-1].ID, r.ID, r.Seq)
		}
		if err := t.insert(r); err != nil {
			return 0, err
		}
		seq = max(seq, r.Seq)
	}
	if err := t.idx.SetSequence(seq); err != nil {
		return 0, err
	}
	return len(recs), t.meta.Put(keyVersion, []byte{stateVersion})
}

// Usage is how much of its resident-credential capacity a state holds,
// and whether a PIN is set.
type Usage struct {
	Residents int // resident credentials
	RPs       int // relying parties they belong to
	Max       int // the capacity the daemon last ran with
	Version   int // state layout version
	// Older: a layout the daemon upgrades when it next opens the state.
	Older bool
	// PINSet: a PIN is set (so credProtect-3 credentials may exist: none
	// is made without one, and a reset removes both).
	PINSet bool
}

// ReadUsage reads Usage from the state in dir without the TPM and
// without writing (a version-1 state is counted, not upgraded). It fails
// with an error wrapping ErrStateInUse when another process, such as the
// daemon, holds the state, and with fs.ErrNotExist when there is none.
func ReadUsage(dir string) (Usage, error) {
	path := StatePath(dir)
	// A damaged file must be reported, not mapped (see CheckState).
	switch st, err := CheckState(dir); {
	case err != nil:
		return Usage{}, err
	case st.InUse:
		return Usage{}, inUse(path, berrors.ErrTimeout)
	}
	if _, err := os.Stat(path); err != nil {
		return Usage{}, fmt.Errorf("tpmstore: %w", err)
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: 500 * time.Millisecond})
	if err != nil {
		if errors.Is(err, berrors.ErrTimeout) {
			return Usage{}, inUse(path, err)
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
			u.Older = v[0] < stateVersion
		}
		if v := m.Get(keyResMax); len(v) == 4 {
			u.Max = int(binary.BigEndian.Uint32(v))
		}
		u.PINSet = m.Get(keyPINPub) != nil
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
		// Versions 2 and 3 keep the totals.
		t := &resTx{meta: m}
		var err error
		if u.Residents, err = t.count(keyResCount); err != nil {
			return err
		}
		u.RPs, err = t.count(keyResRPs)
		return err
	})
	return u, err
}
