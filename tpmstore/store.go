package tpmstore

import (
	"bytes"
	"cmp"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"io/fs"
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

// StatePath is the path of the state database in the state directory
// dir: the file to name to the user, to back up or to restore. Only
// tpmstore opens it.
func StatePath(dir string) string { return filepath.Join(dir, stateFile) }

// stateVersion is the layout this build writes. Versions 1 (a residents
// bucket without indexes) and 2 (the same records, indexes of IDs) are
// upgraded in place at Open.
const stateVersion = 3

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

	// The TPM anchor (anchor.go): absent in states made before it, which
	// Open upgrades.
	keyAnchorHandle = []byte("anchor.handle") // persistent handle, 4 bytes
	keyAnchorName   = []byte("anchor.name")
	keyAnchorAuth   = []byte("anchor.auth")   // 32 bytes
	keyWrapCheck    = []byte("wrap.check")    // 16 bytes: says the anchor derived the right key
	keyWrapV1       = []byte("wrap.v1")       // upgraded states: the version-1 IDs' wrapping key, sealed
	keyCtrIndex     = []byte("counter.index") // NV index handle, 4 bytes
	keyCtrAuth      = []byte("counter.auth")  // 32 bytes
	keyCtrBase      = []byte("counter.base")  // 4 bytes
	keyCtrN0        = []byte("counter.n0")    // 8 bytes
	// keyPendingAuth lists the TPM objects being provisioned, each its
	// handle (4 bytes) and the authValue (32 bytes) it is created with:
	// if the process dies before the state records them, the next Open
	// removes those that take that authValue (so never another store's
	// object that took a free handle meanwhile) instead of leaving them
	// behind in the TPM.
	keyPendingAuth = []byte("tpm.pending.auth")
	// keyPending is the older record, handles only (4 bytes each). Its
	// objects cannot be proven to be this store's, so they are left in
	// the TPM (and logged).
	keyPending = []byte("tpm.pending")
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
	// MaxLoaded bounds the transient objects the TPM must hold for the
	// store: the storage primary stays loaded, one slot is kept free for
	// the persistent anchor key (the TPM loads a persistent object into a
	// transient slot while a command uses it), the rest is an LRU of
	// credential keys and the PIN object (0: DefaultMaxLoaded; at least 3).
	MaxLoaded int
	// CheckInBackground lets Open return before the full check of the
	// state's structure has ended. Open always checks at once what it
	// reads itself (the header pages, the free-page list, the root and
	// meta buckets: a cost that does not grow with the number of
	// credentials) and then checks every page in use; with this set, that
	// walk runs on while the TPM starts and after Open returns, and every
	// method that reads or writes the state waits for it (Checked) and
	// fails with its error. For the daemon, whose start would otherwise
	// grow with the state (docs/benchmarks.md).
	CheckInBackground bool
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

	mu     sync.Mutex
	closed bool
	srk    tpm2.NamedHandle
	srkFP  []byte // SHA-256 of the SRK public area
	// hmacPub/hmacPriv: the HMAC key of states made before the TPM
	// anchor, kept for the hmac-secret of their version-1 credentials
	// (nil in states made since).
	hmacPub   []byte
	hmacPriv  []byte
	wrapKey   []byte // 32 bytes, derived with the anchor key at Open
	wrapKeyV1 []byte // version-1 credential IDs' wrapping key, or nil
	slots     slotCache
	// held is a transient object the store uses outside the slot cache
	// (a new anchor key during Reset), which flushForeign must leave.
	held tpm2.TPMHandle

	anchor     tpmObject // persistent anchor key (anchor.go)
	counterIdx tpmObject // NV counter index
	ctrBase    uint32    // counter value below block ctrN0
	ctrN0      uint64    // counter index value when it was defined
	ctrBlock   uint64    // counter index value last seen
	// stale: opened with allowStale and the anchor does not match; only
	// Reset may be used.
	stale bool

	counter uint32 // last value handed out

	pinPub, pinPriv []byte // nil when no PIN is set
	pinRetries      int
	pinFails        int // consecutive wrong PINs since Open (memory only)
	// lastDAFailure is when this store last made the TPM count a failed
	// authorisation (a wrong PIN), to say when the TPM forgives it.
	lastDAFailure time.Time

	syncs int // committed write transactions (each one fsynced)

	// check is the full check of the state's structure Open started
	// (guard.go); nil when the caller checked (CheckState's own read).
	check *stateCheck
	// startTx is the transaction whose pages Open's start check read.
	startTx uint64
	// broken is set when a transaction met a fault or a damaged file:
	// every later one fails with it. faulted: it was a panic, after which
	// bbolt's locks may be held, so Close leaves the database alone.
	broken  error
	faulted bool
}

// Open opens (or, on first run, creates) the store in cfg.Dir. It costs
// three TPM commands: CreatePrimary for the storage key, one HMAC with
// the anchor key deriving the credential-ID wrapping key, and NV_Read of
// the counter index.
//
// Errors: ErrForeignTPM when the state was made under another TPM (or the
// TPM was cleared), ErrCorruptState when the state cannot be read; in
// both cases nothing in cfg.Dir is modified. With Config.CheckInBackground,
// damage beyond the pages Open reads itself is reported by Checked, and
// by every method that reads or writes the state, instead.
func Open(cfg Config) (*Store, error) {
	return open(cfg, false)
}

func open(cfg Config, allowStale bool) (*Store, error) {
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
	s.slots.capacity = maxLoaded - 2

	// Examine the state before bbolt maps it: a damaged file is reported
	// (and left alone) instead of crashing the process.
	st, err := checkStateWait(cfg.Dir, 2*time.Second)
	if err != nil {
		return nil, err
	}
	s.startTx = st.txid
	if st.Warning != "" {
		s.log.Warn("the state database is damaged but usable", "path", st.Path, "problem", st.Warning)
	}
	if err := prepareDir(cfg.Dir, s.log); err != nil {
		return nil, err
	}
	path := StatePath(cfg.Dir)
	if !st.Exists {
		if err := createDB(path); err != nil {
			return nil, err
		}
	}
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
			return nil, inUse(path, err)
		case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrChecksum),
			errors.Is(err, berrors.ErrVersionMismatch), errors.Is(err, berrors.ErrInvalidMapping):
			return nil, fmt.Errorf("%w: %s: %w", ErrCorruptState, path, err)
		}
		return nil, fmt.Errorf("tpmstore: open %s: %w", path, err)
	}
	s.db = db
	// Every page in use, now that bbolt holds the file (no other process
	// writes it) and before this one writes anything.
	s.check = startStateCheck(path)
	if !cfg.CheckInBackground {
		if err := s.Checked(); err != nil {
			db.Close()
			return nil, err
		}
	}
	if err := s.start(allowStale); err != nil {
		s.flushAll()
		s.closeDB()
		return nil, err
	}
	return s, nil
}

// checkStateWait is Open's start check (the scope of what Open reads
// itself), waiting up to timeout for another process to release the
// database.
func checkStateWait(dir string, timeout time.Duration) (StateStatus, error) {
	deadline := time.Now().Add(timeout)
	for {
		st, err := checkState(dir, scopeStart)
		if err != nil || !st.InUse {
			return st, err
		}
		if time.Now().After(deadline) {
			return st, inUse(st.Path, berrors.ErrTimeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// createDB creates an empty database at path all at once: bbolt writes
// its first pages into a new file, so a crash there would leave an empty
// or partial file that later reads as damaged. It is built under a
// temporary name and linked into place (never over an existing file).
func createDB(path string) error {
	tmp := path + ".new"
	os.Remove(tmp)
	db, err := bolt.Open(tmp, 0o600, &bolt.Options{Timeout: time.Second})
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("tpmstore: creating %s: %w", path, err)
	}
	if err := db.Close(); err != nil {
		os.Remove(tmp)
		return fmt.Errorf("tpmstore: creating %s: %w", path, err)
	}
	err = os.Link(tmp, path)
	os.Remove(tmp)
	if err != nil && !errors.Is(err, fs.ErrExist) {
		return fmt.Errorf("tpmstore: creating %s: %w", path, err)
	}
	if d, err := os.Open(filepath.Dir(path)); err == nil {
		d.Sync()
		d.Close()
	}
	return nil
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
	counter  uint32 // states before the anchor: the reserved counter
	pinPub   []byte
	pinPriv  []byte
	retries  int

	anchored   bool
	anchor     tpmObject
	counterIdx tpmObject
	wrapCheck  []byte
	wrapV1     []byte
	ctrBase    uint32
	ctrN0      uint64
	pending    []tpmObject // keyPendingAuth, and keyPending's handles (no auth)
}

// readMeta reads the meta bucket. At Open it does not wait for the full
// state check: Open's start check has read the same pages, unless another
// process committed between that check and bbolt's open.
func (s *Store) readMeta() (persisted, error) {
	var p persisted
	if err := s.broken; err != nil {
		return p, err
	}
	err := s.guarded(false, func(tx *bolt.Tx) error {
		if s.check != nil && uint64(tx.ID()) != s.startTx {
			if err := s.Checked(); err != nil {
				return err
			}
		}
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
		pending, err := parsePending(m.Get(keyPendingAuth), m.Get(keyPending))
		if err != nil {
			return err
		}
		p.pending = pending
		if m.Get(keyVersion) == nil && m.Stats().KeyN == 1 && pending != nil {
			// A first run that died while creating its TPM objects.
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
		if p.wrapSalt, err = get(keyWrapSalt, 32); err != nil {
			return err
		}
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
		hp, hv := m.Get(keyHMACPub), m.Get(keyHMACPriv)
		if (hp == nil) != (hv == nil) {
			return fmt.Errorf("%w: HMAC key half present", ErrCorruptState)
		}
		p.hmacPub, p.hmacPriv = bytes.Clone(hp), bytes.Clone(hv)

		p.anchored = m.Get(keyAnchorHandle) != nil
		if !p.anchored {
			// A state from before the TPM anchor: it has the HMAC key
			// and keeps the counter reservation on disk.
			if p.hmacPub == nil {
				return fmt.Errorf("%w: meta %q missing", ErrCorruptState, keyHMACPub)
			}
			c, err := get(keyCounter, 4)
			if err != nil {
				return err
			}
			p.counter = binary.BigEndian.Uint32(c)
			return nil
		}
		h, err := get(keyAnchorHandle, 4)
		if err != nil {
			return err
		}
		p.anchor.handle = tpm2.TPMHandle(binary.BigEndian.Uint32(h))
		if p.anchor.name, err = get(keyAnchorName, 0); err != nil {
			return err
		}
		if p.anchor.auth, err = get(keyAnchorAuth, 32); err != nil {
			return err
		}
		if p.wrapCheck, err = get(keyWrapCheck, wrapCheckSize); err != nil {
			return err
		}
		if w := m.Get(keyWrapV1); w != nil {
			if p.hmacPub == nil {
				return fmt.Errorf("%w: version-1 wrapping key without the HMAC key", ErrCorruptState)
			}
			p.wrapV1 = bytes.Clone(w)
		}
		if h, err = get(keyCtrIndex, 4); err != nil {
			return err
		}
		p.counterIdx.handle = tpm2.TPMHandle(binary.BigEndian.Uint32(h))
		if p.counterIdx.auth, err = get(keyCtrAuth, 32); err != nil {
			return err
		}
		if p.counterIdx.name, err = counterName(p.counterIdx.handle); err != nil {
			return fmt.Errorf("%w: counter index: %w", ErrCorruptState, err)
		}
		b, err := get(keyCtrBase, 4)
		if err != nil {
			return err
		}
		p.ctrBase = binary.BigEndian.Uint32(b)
		n0, err := get(keyCtrN0, 8)
		if err != nil {
			return err
		}
		p.ctrN0 = binary.BigEndian.Uint64(n0)
		if p.anchor.handle < anchorHandleFirst || p.anchor.handle > anchorHandleLast ||
			p.counterIdx.handle < counterIndexFirst || p.counterIdx.handle > counterIndexLast {
			return fmt.Errorf("%w: TPM handles 0x%08x/0x%08x out of range", ErrCorruptState, uint32(p.anchor.handle), uint32(p.counterIdx.handle))
		}
		return nil
	})
	return p, err
}

// parsePending reads the pending-objects records: withAuth (handle ‖
// authValue entries) and legacy (handles only). nil when there are none.
func parsePending(withAuth, legacy []byte) ([]tpmObject, error) {
	if withAuth == nil && legacy == nil {
		return nil, nil
	}
	if len(withAuth)%36 != 0 {
		return nil, fmt.Errorf("%w: meta %q malformed", ErrCorruptState, keyPendingAuth)
	}
	if len(legacy)%4 != 0 {
		return nil, fmt.Errorf("%w: meta %q malformed", ErrCorruptState, keyPending)
	}
	objs := []tpmObject{}
	for i := 0; i < len(withAuth); i += 36 {
		objs = append(objs, tpmObject{handle: tpm2.TPMHandle(binary.BigEndian.Uint32(withAuth[i:])), auth: bytes.Clone(withAuth[i+4 : i+36])})
	}
	for i := 0; i < len(legacy); i += 4 {
		objs = append(objs, tpmObject{handle: tpm2.TPMHandle(binary.BigEndian.Uint32(legacy[i:]))})
	}
	return objs, nil
}

// madeByThisTPM reports whether the state's TPM objects belong to this
// TPM although the storage key fingerprint differs: the HMAC key blob of
// an older state loads only under this TPM's storage key, and the anchor
// key at its persistent handle has the recorded name only in this TPM
// (a cleared TPM has no persistent objects left).
func (s *Store) madeByThisTPM(p persisted) bool {
	if p.hmacPub != nil {
		_, err := s.loaded(slotHMAC, p.hmacPub, p.hmacPriv)
		return err == nil
	}
	if p.anchored {
		present, ours, name, err := s.ownedAnchorAt(p.anchor.handle)
		return err == nil && present && ours && bytes.Equal(name, p.anchor.name)
	}
	return false
}

func (s *Store) start(allowStale bool) error {
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
		return s.initialise(fp[:], p.pending)
	}
	if !bytes.Equal(fp[:], p.srk) {
		// Another TPM, or a damaged record of this one?
		if s.madeByThisTPM(p) {
			return fmt.Errorf("%w: its record of the TPM's storage key is damaged (the keys it holds are this TPM's)", ErrCorruptState)
		}
		return fmt.Errorf("%w: the credentials in %s belong to another TPM (or this TPM was cleared); they cannot be used here", ErrForeignTPM, s.db.Path())
	}
	s.hmacPub, s.hmacPriv = p.hmacPub, p.hmacPriv
	s.pinPub, s.pinPriv, s.pinRetries = p.pinPub, p.pinPriv, p.retries
	if !p.anchored {
		err = s.upgradeToAnchor(p)
	} else {
		err = s.openAnchored(p, allowStale)
	}
	if err != nil || s.stale {
		return err
	}
	return s.upgrade(p)
}

// openAnchored derives the wrapping key with the anchor key and reads
// the counter index: 2 TPM commands (TPM2_HMAC, TPM2_NV_Read).
func (s *Store) openAnchored(p persisted, allowStale bool) error {
	s.anchor, s.counterIdx = p.anchor, p.counterIdx
	s.ctrBase, s.ctrN0 = p.ctrBase, p.ctrN0
	key, err := s.anchorHMAC(s.anchor, wrapKeyInput(p.wrapSalt))
	switch {
	case err == nil && hmac.Equal(wrapCheck(key), p.wrapCheck):
	case err == nil || isGone(err):
		if allowStale {
			s.stale = true
			return nil
		}
		return fmt.Errorf("%w: the TPM anchor key of %s (persistent handle 0x%08x) is gone or was replaced: the key store was reset after this copy of state.db was made, or another program removed the key. Its credentials can no longer be used; `tpm-fido reset` starts afresh (%v)",
			ErrStaleState, s.db.Path(), uint32(s.anchor.handle), err)
	default:
		return err
	}
	s.wrapKey = key
	if p.wrapV1 != nil {
		if s.wrapKeyV1, err = openWrapV1(key, p.wrapV1); err != nil {
			return err
		}
	}
	n, err := s.nvRead(s.counterIdx)
	if err != nil {
		if isGone(err) {
			if allowStale {
				s.stale = true
				return nil
			}
			return fmt.Errorf("%w: the TPM counter index of %s (0x%08x) is gone: another program removed it, so the signature counter cannot be trusted; `tpm-fido reset` starts afresh (%v)",
				ErrStaleState, s.db.Path(), uint32(s.counterIdx.handle), err)
		}
		return err
	}
	if n < s.ctrN0 {
		return fmt.Errorf("%w: the TPM counter index 0x%08x reads %d, below its first value %d", ErrStaleState, uint32(s.counterIdx.handle), n, s.ctrN0)
	}
	// Every value of block n may have been handed out already.
	s.ctrBlock = n
	s.counter = s.reserved()
	return nil
}

// provision creates the anchor key and the counter index at free
// handles, recording their handles and authValues as pending first (in
// a transaction that also creates the meta bucket) so that a process
// that dies before the state records them does not leave them behind,
// and the next start can prove which objects at those handles are its
// own.
func (s *Store) provision() (anchor, counterIdx tpmObject, n0 uint64, err error) {
	authA, err := s.randomAuth()
	if err != nil {
		return anchor, counterIdx, 0, err
	}
	authC, err := s.randomAuth()
	if err != nil {
		return anchor, counterIdx, 0, err
	}
	ha, err := s.freeHandle(anchorHandleFirst, anchorHandleLast)
	if err != nil {
		return anchor, counterIdx, 0, err
	}
	hc, err := s.freeHandle(counterIndexFirst, counterIndexLast)
	if err != nil {
		return anchor, counterIdx, 0, err
	}
	err = s.update(func(tx *bolt.Tx) error {
		m, err := tx.CreateBucketIfNotExists(bucketMeta)
		if err != nil {
			return err
		}
		rec := append(append(be32(uint32(ha)), authA...), append(be32(uint32(hc)), authC...)...)
		return m.Put(keyPendingAuth, rec)
	})
	if err != nil {
		return anchor, counterIdx, 0, err
	}
	anchor, t, err := s.newAnchorKey(authA, anchorMark(authC))
	if err != nil {
		return anchor, counterIdx, 0, err
	}
	if err := s.persistAnchor(t, ha); err != nil {
		return anchor, counterIdx, 0, err
	}
	anchor.handle = ha
	counterIdx, n0, err = s.newCounterIndex(hc, authC)
	if err != nil {
		s.removeTPMObjects([]tpmObject{anchor})
		return anchor, counterIdx, 0, err
	}
	return anchor, counterIdx, n0, nil
}

// removeTPMObjects removes the store's persistent objects and NV indices
// objs stand for (best effort, logged): a provisioning that did not
// complete. Each must prove to be the store's (evictAnchor,
// undefineCounter); an object that does not, or one recorded without
// its authValue, is left in the TPM.
func (s *Store) removeTPMObjects(objs []tpmObject) {
	for _, o := range objs {
		h := fmt.Sprintf("0x%08x", uint32(o.handle))
		var err error
		switch tpm2.TPMHT(o.handle >> 24) {
		case tpm2.TPMHTPersistent:
			if o.auth == nil && o.name == nil {
				s.log.Warn("an unfinished setup of an older tpm-fido recorded a persistent handle but not its key's authValue, so whatever is there cannot be proven to be ours and is left in the TPM; if no other program or user uses it: tpm2_evictcontrol -C o -c "+h, "handle", h)
				continue
			}
			err = s.evictAnchor(o)
		case tpm2.TPMHTNVIndex:
			if o.auth == nil {
				s.log.Warn("an unfinished setup of an older tpm-fido recorded an NV index but not its authValue, so whatever is there cannot be proven to be ours and is left in the TPM; if no other program or user uses it: tpm2_nvundefine -C o "+h, "handle", h)
				continue
			}
			err = s.undefineCounter(o)
		default:
			continue
		}
		switch {
		case errors.Is(err, errNotOurs):
			s.log.Info("a handle an unfinished setup had picked now holds another key store's or program's object; left alone", "handle", h)
		case err != nil:
			s.log.Warn("removing a TPM object of an unfinished setup", "handle", h, "err", err)
		default:
			s.log.Info("removed a TPM object of an unfinished setup (if it was there)", "handle", h)
		}
	}
}

// anchorMeta is the key-value pairs recording the anchor and counter.
func anchorMeta(anchor, counterIdx tpmObject, base uint32, n0 uint64, check []byte) [][]byte {
	return [][]byte{
		keyAnchorHandle, be32(uint32(anchor.handle)),
		keyAnchorName, anchor.name,
		keyAnchorAuth, anchor.auth,
		keyWrapCheck, check,
		keyCtrIndex, be32(uint32(counterIdx.handle)),
		keyCtrAuth, counterIdx.auth,
		keyCtrBase, be32(base),
		keyCtrN0, binary.BigEndian.AppendUint64(nil, n0),
	}
}

// upgradeToAnchor brings a state made before the TPM anchor to it, once:
// it derives the old wrapping key with the old HMAC key, creates the
// anchor key and the counter index, and stores the old wrapping key
// sealed under the new one, so that version-1 credential IDs keep
// working until the next reset. The counter continues above the old
// reservation.
func (s *Store) upgradeToAnchor(p persisted) error {
	if len(p.pending) > 0 {
		s.removeTPMObjects(p.pending)
	}
	if _, err := s.loaded(slotHMAC, s.hmacPub, s.hmacPriv); err != nil {
		if isIntegrityError(err) {
			return fmt.Errorf("%w: HMAC key blob rejected by the TPM: %w", ErrCorruptState, err)
		}
		return err
	}
	keyV1, err := s.tpmHMAC(wrapKeyInput(p.wrapSalt))
	if err != nil {
		return err
	}
	anchor, counterIdx, n0, err := s.provision()
	if err != nil {
		return err
	}
	key, err := s.anchorHMAC(anchor, wrapKeyInput(p.wrapSalt))
	if err != nil {
		s.removeTPMObjects([]tpmObject{anchor, counterIdx})
		return err
	}
	sealed, err := sealWrapV1(s.rand, key, keyV1)
	if err != nil {
		return err
	}
	err = s.update(func(tx *bolt.Tx) error {
		m := tx.Bucket(bucketMeta)
		kv := append(anchorMeta(anchor, counterIdx, p.counter, n0, wrapCheck(key)), keyWrapV1, sealed)
		if err := putAll(m, kv...); err != nil {
			return err
		}
		if err := m.Delete(keyCounter); err != nil {
			return err
		}
		return deletePending(m)
	})
	if err != nil {
		s.removeTPMObjects([]tpmObject{anchor, counterIdx})
		return err
	}
	s.anchor, s.counterIdx = anchor, counterIdx
	s.wrapKey, s.wrapKeyV1 = key, keyV1
	s.ctrBase, s.ctrN0, s.ctrBlock = p.counter, n0, n0
	s.counter = p.counter
	s.log.Info("key store upgraded: reset and the signature counter are now anchored in the TPM",
		"anchor_key", fmt.Sprintf("0x%08x", uint32(anchor.handle)), "counter_index", fmt.Sprintf("0x%08x", uint32(counterIdx.handle)))
	return nil
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
		if p.version < stateVersion {
			n, err := upgradeResidents(tx)
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
		s.log.Info("state upgraded to the current layout (indexed resident credentials)", "from", p.version, "to", stateVersion, "residents", migrated)
	}
	return nil
}

// initialise creates the anchor key, the counter index and the wrapping
// salt on first run.
func (s *Store) initialise(srkFingerprint []byte, pending []tpmObject) error {
	if len(pending) > 0 {
		s.removeTPMObjects(pending)
	}
	salt := make([]byte, 32)
	if _, err := io.ReadFull(s.rand, salt); err != nil {
		return fmt.Errorf("tpmstore: random: %w", err)
	}
	anchor, counterIdx, n0, err := s.provision()
	if err != nil {
		return err
	}
	key, err := s.anchorHMAC(anchor, wrapKeyInput(salt))
	if err != nil {
		s.removeTPMObjects([]tpmObject{anchor, counterIdx})
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
		if err := putAll(m, anchorMeta(anchor, counterIdx, 0, n0, wrapCheck(key))...); err != nil {
			return err
		}
		if err := deletePending(m); err != nil {
			return err
		}
		return putAll(m,
			keyVersion, []byte{stateVersion},
			keySRK, srkFingerprint,
			keyWrapSalt, salt,
			keyPINRetries, []byte{maxPINRetries},
		)
	})
	if err != nil {
		s.removeTPMObjects([]tpmObject{anchor, counterIdx})
		return err
	}
	s.anchor, s.counterIdx = anchor, counterIdx
	s.wrapKey = key
	s.ctrBase, s.ctrN0, s.ctrBlock = 0, n0, n0
	s.counter = 0
	s.pinRetries = maxPINRetries
	s.log.Info("created new TPM key store", "dir", filepath.Dir(s.db.Path()),
		"anchor_key", fmt.Sprintf("0x%08x", uint32(anchor.handle)), "counter_index", fmt.Sprintf("0x%08x", uint32(counterIdx.handle)))
	return nil
}

// deletePending removes both pending-objects records.
func deletePending(m *bolt.Bucket) error {
	if err := m.Delete(keyPendingAuth); err != nil {
		return err
	}
	return m.Delete(keyPending)
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

// update runs fn in a write transaction, once the state is known to be
// whole (usable) and guarded; bbolt fsyncs on commit.
func (s *Store) update(fn func(tx *bolt.Tx) error) error {
	err := s.usable()
	if err == nil {
		err = s.guarded(true, func(tx *bolt.Tx) error {
			if err := s.fileWhole(tx); err != nil {
				return err
			}
			return fn(tx)
		})
	}
	if err != nil {
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
	return s.closeDB()
}

// closeDB closes the database once the state check has ended (it reads
// the file). After a fault it leaves it open: bbolt's locks may be held,
// and its Close would wait for them forever; the process's exit releases
// the file.
func (s *Store) closeDB() error {
	s.Checked()
	if s.faulted {
		return nil
	}
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
