package tpmstore

import (
	"bytes"
	"cmp"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	bolt "go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// DefaultMaxResidents is the number of resident credentials a store
// holds unless Config.MaxResidents (or the capacity a daemon stored)
// says otherwise. The layout keeps each operation's cost flat well past
// it (docs/benchmarks.md); the bound only caps the disk an RP can fill.
const DefaultMaxResidents = 10000

// DefaultMaxLoaded is the number of transient TPM objects a store keeps
// loaded at once, the storage primary included. Three is what the Linux
// kernel resource manager grants one connection and what the reference
// TPM (and swtpm) hold in total.
const DefaultMaxLoaded = 3

// stateFile is the bbolt database in the state directory.
const stateFile = "state.db"

// stateVersion is the layout this build writes. Version 1 (a residents
// bucket without indexes) is upgraded in place at Open.
const stateVersion = 2

// PIN retries (CTAP 2.1 §6.5.2.1).
const (
	maxPINRetries       = 8
	maxConsecutiveFails = 3
)

// counterReserve is how far ahead the signature counter is persisted.
const counterReserve = 256

var (
	bucketMeta      = []byte("meta")
	bucketResidents = []byte("residents")

	keyVersion    = []byte("version")
	keySRK        = []byte("srk")
	keyHMACPub    = []byte("hmac.pub")
	keyHMACPriv   = []byte("hmac.priv")
	keyWrapSalt   = []byte("wrap.salt")
	keyCounter    = []byte("counter")
	keyPINPub     = []byte("pin.pub")
	keyPINPriv    = []byte("pin.priv")
	keyPINRetries = []byte("pin.retries")
)

// Config configures Open.
type Config struct {
	// TPM is the open TPM connection; the Store does not close it.
	TPM transport.TPM
	// Dir is the state directory; created 0700 on first run.
	Dir    string
	Logger *slog.Logger // nil: discard
	Rand   io.Reader    // nil: crypto/rand
	Now    func() time.Time
	// MaxResidents bounds the resident credentials. A positive value is
	// also stored, so that tools opening the state later (tpm-fido list)
	// report the capacity the daemon runs with; 0 uses the stored value,
	// else DefaultMaxResidents.
	MaxResidents int
	// MaxLoaded bounds the transient objects kept loaded in the TPM: the
	// storage primary and the HMAC key stay loaded, the rest is an LRU of
	// credential keys (0: DefaultMaxLoaded; at least 3).
	MaxLoaded int
}

// Store is the TPM-backed key store. All methods are safe for concurrent
// use; TPM commands are serialised.
type Store struct {
	tpm          transport.TPM
	db           *bolt.DB
	log          *slog.Logger
	rand         io.Reader
	now          func() time.Time
	maxResidents int

	mu       sync.Mutex
	closed   bool
	srk      tpm2.NamedHandle
	srkFP    []byte // SHA-256 of the SRK public area
	hmacPub  []byte
	hmacPriv []byte
	wrapKey  []byte // 32 bytes, derived in the TPM at Open
	slots    slotCache

	counter  uint32 // last value handed out
	reserved uint32 // persisted high-water mark

	pinPub, pinPriv []byte // nil when no PIN is set
	pinRetries      int
	pinFails        int // consecutive wrong PINs since Open (memory only)
	// lastDAFailure is when this store last made the TPM count a failed
	// authorisation (a wrong PIN), to say when the TPM forgives it.
	lastDAFailure time.Time

	syncs int // committed write transactions (each one fsynced)
}

// Open opens (or, on first run, creates) the store in cfg.Dir. It costs
// three TPM commands: CreatePrimary for the storage key, Load of the HMAC
// key and one HMAC deriving the credential-ID wrapping key.
//
// Errors: ErrForeignTPM when the state was made under another TPM (or the
// TPM was cleared), ErrCorruptState when the state cannot be read; in
// both cases nothing in cfg.Dir is modified.
func Open(cfg Config) (*Store, error) {
	if cfg.TPM == nil {
		return nil, errors.New("tpmstore: Config.TPM is nil")
	}
	if cfg.Dir == "" {
		return nil, errors.New("tpmstore: Config.Dir is empty")
	}
	s := &Store{
		tpm:          cfg.TPM,
		log:          cfg.Logger,
		rand:         cfg.Rand,
		now:          cfg.Now,
		maxResidents: cfg.MaxResidents,
	}
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.rand == nil {
		s.rand = rand.Reader
	}
	if s.now == nil {
		s.now = time.Now
	}
	if cfg.MaxResidents < 0 || cfg.MaxResidents > math.MaxInt32 {
		return nil, fmt.Errorf("tpmstore: Config.MaxResidents %d out of range", cfg.MaxResidents)
	}
	maxLoaded := cfg.MaxLoaded
	if maxLoaded == 0 {
		maxLoaded = DefaultMaxLoaded
	}
	if maxLoaded < 3 {
		return nil, fmt.Errorf("tpmstore: Config.MaxLoaded %d: need at least 3", maxLoaded)
	}
	s.slots.capacity = maxLoaded - 1

	if err := prepareDir(cfg.Dir, s.log); err != nil {
		return nil, err
	}
	path := filepath.Join(cfg.Dir, stateFile)
	if fi, err := os.Stat(path); err == nil && fi.Mode().Perm() != 0o600 {
		if err := os.Chmod(path, 0o600); err != nil {
			return nil, fmt.Errorf("tpmstore: %w", err)
		}
		s.log.Warn("tightened state file mode", "path", path, "was", fi.Mode().Perm())
	}
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		switch {
		case errors.Is(err, berrors.ErrTimeout):
			return nil, fmt.Errorf("tpmstore: %s is in use by another process: %w", path, err)
		case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum),
			errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrInvalidMapping):
			return nil, fmt.Errorf("%w: %s: %w", ErrCorruptState, path, err)
		}
		return nil, fmt.Errorf("tpmstore: open %s: %w", path, err)
	}
	s.db = db
	if err := s.start(); err != nil {
		s.flushAll()
		db.Close()
		return nil, err
	}
	return s, nil
}

func prepareDir(dir string, log *slog.Logger) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("tpmstore: create state directory: %w", err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("tpmstore: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("tpmstore: state path %s is not a directory", dir)
	}
	if fi.Mode().Perm() != 0o700 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return fmt.Errorf("tpmstore: %w", err)
		}
		log.Warn("tightened state directory mode", "dir", dir, "was", fi.Mode().Perm())
	}
	return nil
}

// persisted is the meta bucket as read at Open.
type persisted struct {
	fresh    bool
	version  byte
	maxRes   int // 0: none stored
	srk      []byte
	hmacPub  []byte
	hmacPriv []byte
	wrapSalt []byte
	counter  uint32
	pinPub   []byte
	pinPriv  []byte
	retries  int
}

func (s *Store) readMeta() (persisted, error) {
	var p persisted
	err := s.db.View(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		if m == nil {
			// A first run that crashed before its first commit leaves an
			// empty database: nothing to lose, start afresh.
			empty := true
			_ = tx.ForEach(func([]byte, *bolt.Bucket) error { empty = false; return nil })
			if !empty {
				return fmt.Errorf("%w: meta bucket missing", ErrCorruptState)
			}
			p.fresh = true
			return nil
		}
		get := func(k []byte, size int) ([]byte, error) {
			v := m.Get(k)
			if v == nil || (size > 0 && len(v) != size) {
				return nil, fmt.Errorf("%w: meta %q missing or malformed", ErrCorruptState, k)
			}
			return bytes.Clone(v), nil
		}
		v, err := get(keyVersion, 1)
		if err != nil {
			return err
		}
		if v[0] < 1 || v[0] > stateVersion {
			return fmt.Errorf("%w: state version %d, this build reads 1 to %d", ErrCorruptState, v[0], stateVersion)
		}
		p.version = v[0]
		if mr := m.Get(keyResMax); mr != nil {
			if len(mr) != 4 {
				return fmt.Errorf("%w: meta %q malformed", ErrCorruptState, keyResMax)
			}
			p.maxRes = int(binary.BigEndian.Uint32(mr))
		}
		if p.srk, err = get(keySRK, sha256.Size); err != nil {
			return err
		}
		if p.hmacPub, err = get(keyHMACPub, 0); err != nil {
			return err
		}
		if p.hmacPriv, err = get(keyHMACPriv, 0); err != nil {
			return err
		}
		if p.wrapSalt, err = get(keyWrapSalt, 32); err != nil {
			return err
		}
		c, err := get(keyCounter, 4)
		if err != nil {
			return err
		}
		p.counter = binary.BigEndian.Uint32(c)
		r, err := get(keyPINRetries, 1)
		if err != nil {
			return err
		}
		p.retries = int(r[0])
		if p.retries > maxPINRetries {
			return fmt.Errorf("%w: PIN retries %d", ErrCorruptState, p.retries)
		}
		pp, pv := m.Get(keyPINPub), m.Get(keyPINPriv)
		if (pp == nil) != (pv == nil) {
			return fmt.Errorf("%w: PIN object half present", ErrCorruptState)
		}
		p.pinPub, p.pinPriv = bytes.Clone(pp), bytes.Clone(pv)
		return nil
	})
	return p, err
}

func (s *Store) start() error {
	p, err := s.readMeta()
	if err != nil {
		return err
	}
	srkPub, err := s.createSRK()
	if err != nil {
		return err
	}
	fp := sha256.Sum256(srkPub)
	s.srkFP = fp[:]
	if p.fresh {
		if s.maxResidents <= 0 {
			s.maxResidents = DefaultMaxResidents
		}
		return s.initialise(fp[:])
	}
	if !bytes.Equal(fp[:], p.srk) {
		return fmt.Errorf("%w: the credentials in %s belong to another TPM (or this TPM was cleared); they cannot be used here", ErrForeignTPM, s.db.Path())
	}
	s.hmacPub, s.hmacPriv = p.hmacPub, p.hmacPriv
	if _, err := s.loaded(slotHMAC, s.hmacPub, s.hmacPriv); err != nil {
		if isIntegrityError(err) {
			return fmt.Errorf("%w: HMAC key blob rejected by the TPM: %w", ErrCorruptState, err)
		}
		return err
	}
	key, err := s.deriveWrapKey(p.wrapSalt)
	if err != nil {
		return err
	}
	s.wrapKey = key
	s.counter, s.reserved = p.counter, p.counter
	s.pinPub, s.pinPriv, s.pinRetries = p.pinPub, p.pinPriv, p.retries
	return s.upgrade(p)
}

// upgrade brings a verified state to the current layout and stores the
// configured capacity, in one fsynced transaction when anything changes.
func (s *Store) upgrade(p persisted) error {
	storeMax := s.maxResidents > 0 && s.maxResidents != p.maxRes
	if s.maxResidents <= 0 {
		s.maxResidents = cmp.Or(p.maxRes, DefaultMaxResidents)
	}
	if p.version == stateVersion && !storeMax {
		return nil
	}
	migrated := -1
	err := s.update(func(tx *bolt.Tx) error {
		if p.version == 1 {
			n, err := migrateV1(tx)
			if err != nil {
				return err
			}
			migrated = n
		}
		if storeMax {
			return tx.Bucket(bucketMeta).Put(keyResMax, be32(uint32(s.maxResidents)))
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("tpmstore: upgrading the state in %s: %w", filepath.Dir(s.db.Path()), err)
	}
	if migrated >= 0 {
		s.log.Info("state upgraded to layout version 2 (indexed resident credentials)", "residents", migrated)
	}
	return nil
}

// initialise creates the HMAC key and the wrapping salt on first run.
func (s *Store) initialise(srkFingerprint []byte) error {
	rsp, err := s.createLoaded(hmacKeyTemplate(), nil)
	if err != nil {
		return fmt.Errorf("tpmstore: create HMAC key: %w", err)
	}
	s.slots.add(slotHMAC, rsp.handle)
	s.hmacPub, s.hmacPriv = rsp.public, rsp.private
	salt := make([]byte, 32)
	if _, err := io.ReadFull(s.rand, salt); err != nil {
		return fmt.Errorf("tpmstore: random: %w", err)
	}
	key, err := s.deriveWrapKey(salt)
	if err != nil {
		return err
	}
	err = s.update(func(tx *bolt.Tx) error {
		m, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		if err := putAll(m, keyResMax, be32(uint32(s.maxResidents))); err != nil {
			return err
		}
		if err := createResidentBuckets(tx); err != nil {
			return err
		}
		return putAll(m,
			keyVersion, []byte{stateVersion},
			keySRK, srkFingerprint,
			keyHMACPub, s.hmacPub,
			keyHMACPriv, s.hmacPriv,
			keyWrapSalt, salt,
			keyCounter, be32(0),
			keyPINRetries, []byte{maxPINRetries},
		)
	})
	if err != nil {
		return err
	}
	s.wrapKey = key
	s.pinRetries = maxPINRetries
	s.log.Info("created new TPM key store", "dir", filepath.Dir(s.db.Path()))
	return nil
}

func putAll(b *bolt.Bucket, kv ...[]byte) error {
	for i := 0; i+1 < len(kv); i += 2 {
		if err := b.Put(kv[i], kv[i+1]); err != nil {
			return err
		}
	}
	return nil
}

func be32(v uint32) []byte { return binary.BigEndian.AppendUint32(nil, v) }

// update runs fn in a write transaction; bbolt fsyncs on commit.
func (s *Store) update(fn func(tx *bolt.Tx) error) error {
	if err := s.db.Update(fn); err != nil {
		return fmt.Errorf("tpmstore: write state: %w", err)
	}
	s.syncs++ // callers hold s.mu
	return nil
}

// Close flushes the store's objects from the TPM and closes the
// database. It does not close the TPM connection.
func (s *Store) Close() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return nil
	}
	s.closed = true
	s.flushAll()
	clear(s.wrapKey)
	s.wrapKey = nil
	return s.db.Close()
}

var errClosed = errors.New("tpmstore: store is closed")

func (s *Store) lock() error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return errClosed
	}
	return nil
}

// isIntegrityError reports whether err says a blob does not belong to
// this TPM/parent or was altered.
func isIntegrityError(err error) bool {
	for _, rc := range []tpm2.TPMRC{tpm2.TPMRCIntegrity, tpm2.TPMRCSize, tpm2.TPMRCValue,
		tpm2.TPMRCKey, tpm2.TPMRCBinding, tpm2.TPMRCInsufficient} {
		if errors.Is(err, rc) {
			return true
		}
	}
	return false
}
