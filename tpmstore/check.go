package tpmstore

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"io/fs"
	"log/slog"
	"math/bits"
	"os"
	"runtime/debug"
	"strings"
	"syscall"
	"time"

	"github.com/google/go-tpm/tpm2"
	bolt "go.etcd.io/bbolt"
	"golang.org/x/sys/unix"
)

// ErrStateUnreadable: the state directory or database exists but this
// process may not read it (its owner or mode is wrong). Left untouched.
var ErrStateUnreadable = errors.New("tpmstore: state cannot be read")

// ErrStateInUse: another process (the daemon) holds the state database.
// Open, ReadUsage and DiscardState fail with an error wrapping it, so
// callers need not know the database's own errors.
var ErrStateInUse = errors.New("tpmstore: state is in use by another process")

// inUse is the error for the database at path held by another process;
// cause (bbolt's lock timeout) stays wrapped too.
func inUse(path string, cause error) error {
	return fmt.Errorf("tpmstore: %s is in use by another process: %w (%w)", path, ErrStateInUse, cause)
}

// StateError says what is wrong with the state and where. It matches
// ErrCorruptState (damaged: truncated, altered, empty, not a directory)
// or ErrStateUnreadable (permissions) with errors.Is.
type StateError struct {
	Path    string // the file or directory at fault
	Problem string // what is wrong with it, for a person
	kind    error  // ErrCorruptState or ErrStateUnreadable
	err     error  // the underlying error, if any
	// readable: the database's structure is whole (only records are
	// bad), so bbolt can read it safely.
	readable bool
}

func (e *StateError) Error() string { return "tpmstore: " + e.Path + ": " + e.Problem }

// Is matches the error's kind: ErrCorruptState or ErrStateUnreadable.
func (e *StateError) Is(target error) bool { return target == e.kind }

// Unwrap returns the underlying error.
func (e *StateError) Unwrap() error { return e.err }

func damaged(path, problem string, err error) *StateError {
	return &StateError{Path: path, Problem: problem, kind: ErrCorruptState, err: err}
}

// StateStatus is what CheckState found.
type StateStatus struct {
	Path   string // the database file
	Exists bool   // false: no state yet; the first Open creates it
	InUse  bool   // another process holds the database; it was not examined
	// Warning is set when the database is usable but not intact: one of
	// its two header pages is damaged and the other one is used.
	Warning string
	txid    uint64 // the transaction whose pages were checked
}

// CheckState examines the state in dir without the TPM and without
// changing anything: that dir is a directory, that its database is a
// readable, non-empty file, and that the database's structure is whole
// (both header pages, every page the tree refers to present and in
// bounds, no page referred to twice, the meta record this package needs).
// It does not wait for a database another process holds (InUse). Errors
// are *StateError.
//
// bbolt maps the database file into memory and trusts it: a database
// truncated below its recorded size makes the process die of SIGBUS on
// first access, and a wild page reference of SIGSEGV. Open runs the same
// check first (all of it before it returns, or with
// Config.CheckInBackground the part it reads at once before and the rest
// while the TPM starts), so such a file is reported instead. It reads
// only the pages in use, once; CheckStateDeep does more.
func CheckState(dir string) (StateStatus, error) { return checkState(dir, scopeFull) }

// CheckStateDeep is CheckState plus bbolt's own consistency check (key
// order, the free-page list, unreachable pages) and a decoding of every
// resident credential record. It costs about a public key parse per
// credential, so Open does not run it; doctor does.
func CheckStateDeep(dir string) (StateStatus, error) { return checkState(dir, scopeDeep) }

// checkScope is how much of the state a check examines.
type checkScope int

const (
	// scopeStart: the file itself, the header pages, the free-page list,
	// the root bucket's pages and the meta bucket's: what Open reads
	// before the full check has ended. Its cost does not grow with the
	// number of credentials.
	scopeStart checkScope = iota
	// scopeFull: CheckState; every page in use and the meta record.
	scopeFull
	// scopeDeep: CheckStateDeep.
	scopeDeep
)

func checkState(dir string, scope checkScope) (StateStatus, error) {
	path := StatePath(dir)
	st := StateStatus{Path: path}
	fi, err := os.Stat(dir)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if lfi, lerr := os.Lstat(dir); lerr == nil && lfi.Mode().Type() == fs.ModeSymlink {
			return st, damaged(dir, "is a symbolic link to something that does not exist", err)
		}
		return st, nil
	case errors.Is(err, fs.ErrPermission):
		return st, &StateError{Path: dir, Problem: "cannot be reached: permission denied", kind: ErrStateUnreadable, err: err}
	case err != nil:
		return st, damaged(dir, err.Error(), err)
	case !fi.IsDir():
		return st, damaged(dir, "is not a directory", nil)
	}
	fi, err = os.Stat(path)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if lfi, lerr := os.Lstat(path); lerr == nil && lfi.Mode().Type() == fs.ModeSymlink {
			return st, damaged(path, "is a symbolic link to something that does not exist", err)
		}
		return st, nil
	case errors.Is(err, fs.ErrPermission):
		return st, &StateError{Path: path, Problem: "cannot be read: permission denied", kind: ErrStateUnreadable, err: err}
	case err != nil:
		return st, damaged(path, err.Error(), err)
	case !fi.Mode().IsRegular():
		return st, damaged(path, "is not a regular file", nil)
	case fi.Size() == 0:
		st.Exists = true
		return st, damaged(path, "is empty (0 bytes)", nil)
	}
	st.Exists = true
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return st, &StateError{Path: path, Problem: "cannot be read: permission denied", kind: ErrStateUnreadable, err: err}
		}
		return st, damaged(path, "cannot be opened: "+err.Error(), err)
	}
	defer f.Close()
	// A shared lock, as bbolt's read-only open takes: the daemon holds an
	// exclusive one while it runs, and its writes must not be read half
	// done.
	if err := unix.Flock(int(f.Fd()), unix.LOCK_SH|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			st.InUse = true
			return st, nil
		}
		return st, damaged(path, "cannot be locked: "+err.Error(), err)
	}
	m, warn, err := checkFile(f, fi.Size(), scope)
	if err != nil {
		return st, damaged(path, err.Error(), err)
	}
	st.Warning, st.txid = warn, m.txid
	if scope == scopeStart {
		return st, nil
	}
	if err := checkWithBolt(path, scope == scopeDeep); err != nil {
		se := damaged(path, err.Error(), err)
		var re *recordError
		se.readable = errors.As(err, &re)
		return st, se
	}
	return st, nil
}

// checkFile maps the pages in use of the open database file f and checks
// their layout to the scope.
func checkFile(f *os.File, size int64, scope checkScope) (boltMeta, string, error) {
	data, release, err := mapInUse(f, size)
	if err != nil {
		if errors.Is(err, syscall.EIO) {
			return boltMeta{}, "", fmt.Errorf("cannot be read (I/O error): %w", err)
		}
		return boltMeta{}, "", fmt.Errorf("cannot be read: %w", err)
	}
	defer release()
	return guardedLayout(data, size, scope)
}

// recordError: the structure is whole but a record does not decode.
type recordError struct{ err error }

func (e *recordError) Error() string { return e.err.Error() }
func (e *recordError) Unwrap() error { return e.err }

// The bbolt file format (version 2), as far as the layout check needs it.
// Every page starts with a 16-byte header: id u64, flags u16, count u16,
// overflow u32. Integers are in the machine's byte order.
const (
	boltMagic        = 0xED0CDAED
	boltVersion      = 2
	pageHeaderSize   = 16
	elementSize      = 16 // branch and leaf elements alike
	branchPageFlag   = 0x01
	leafPageFlag     = 0x02
	metaPageFlag     = 0x04
	freelistPageFlag = 0x10
	bucketLeafFlag   = 0x01
	bucketHeaderSize = 16 // root pgid u64, sequence u64
	noFreelist       = ^uint64(0)
	metaSize         = 56 // magic..txid, then the checksum
	maxTreeDepth     = 64
)

type boltMeta struct {
	pageSize uint32
	root     uint64
	freelist uint64
	pgid     uint64 // high-water mark: pages [0, pgid) are in use or free
	txid     uint64
}

var ne = binary.NativeEndian

// parseMeta reads the meta page at off, or says why it is invalid.
func parseMeta(data []byte, off int) (boltMeta, error) {
	if off+pageHeaderSize+metaSize+8 > len(data) {
		return boltMeta{}, errors.New("missing")
	}
	p := data[off:]
	m := p[pageHeaderSize:]
	if ne.Uint16(p[8:]) != metaPageFlag {
		return boltMeta{}, errors.New("not a header page")
	}
	if ne.Uint32(m[0:]) != boltMagic {
		return boltMeta{}, errors.New("bad magic number")
	}
	if ne.Uint32(m[4:]) != boltVersion {
		return boltMeta{}, fmt.Errorf("format version %d", ne.Uint32(m[4:]))
	}
	h := fnv.New64a()
	h.Write(m[:metaSize])
	if h.Sum64() != ne.Uint64(m[metaSize:]) {
		return boltMeta{}, errors.New("checksum mismatch")
	}
	return boltMeta{
		pageSize: ne.Uint32(m[8:]),
		root:     ne.Uint64(m[16:]),
		freelist: ne.Uint64(m[32:]),
		pgid:     ne.Uint64(m[40:]),
		txid:     ne.Uint64(m[48:]),
	}, nil
}

// rawTxid is the transaction id field of the header page at off, read
// without validating the page (0 if the file is too short). bbolt uses
// the valid header page with the higher id; when the other one is
// damaged, its id says which of the two it was: older (harmless, the
// next commit rewrites it) or newer (bbolt would silently fall back to
// the transaction before, so the state is refused).
func rawTxid(data []byte, off int) uint64 {
	if off < 0 || off+pageHeaderSize+56 > len(data) {
		return 0
	}
	return ne.Uint64(data[off+pageHeaderSize+48:])
}

// mapInUse maps (read-only) the part of the file the database uses: the
// pages below the high-water mark its header pages record, never beyond
// the file's end (the file itself may be longer, bbolt grows it ahead).
// When the headers say nothing usable, the whole file, for checkLayout to
// report on. Mapping, not reading, keeps a 10,000-credential check cheap,
// and the start check touches only the few pages it examines.
func mapInUse(f *os.File, size int64) (data []byte, release func(), err error) {
	// Both header pages at the usual page size; more only when the first
	// one says the pages are larger, or is not valid (checkLayout then
	// looks for the second at every possible page size).
	head, err := readHead(f, min(size, 2*4096))
	if err != nil {
		return nil, nil, err
	}
	if m0, err := parseMeta(head, 0); (err != nil || m0.pageSize > 4096) && size > int64(len(head)) {
		if head, err = readHead(f, min(size, 1<<17)); err != nil {
			return nil, nil, err
		}
	}
	want := size
	if m0, err := parseMeta(head, 0); err == nil {
		want = int64(m0.pgid) * int64(m0.pageSize)
		if m1, err := parseMeta(head, int(m0.pageSize)); err == nil {
			want = max(want, int64(m1.pgid)*int64(m1.pageSize))
		}
		want = min(max(want, int64(len(head))), size)
	}
	if want <= int64(len(head)) {
		return head, func() {}, nil
	}
	m, err := unix.Mmap(int(f.Fd()), 0, int(want), unix.PROT_READ, unix.MAP_SHARED)
	if err != nil {
		return nil, nil, err
	}
	return m, func() { unix.Munmap(m) }, nil
}

func readHead(f *os.File, n int64) ([]byte, error) {
	head := make([]byte, n)
	if _, err := f.ReadAt(head, 0); err != nil && !errors.Is(err, io.EOF) {
		return nil, err
	}
	return head, nil
}

// guardedLayout is checkLayout on a mapped file: should the file shrink
// under it (someone truncating it now), the fault is an error, not a
// crash.
func guardedLayout(data []byte, size int64, scope checkScope) (m boltMeta, warning string, err error) {
	old := debug.SetPanicOnFault(true)
	defer debug.SetPanicOnFault(old)
	defer func() {
		if r := recover(); r != nil {
			err = fmt.Errorf("the file changed while it was checked (%v)", r)
		}
	}()
	return checkLayout(data, size, scope)
}

// checkHeaders picks the header page bbolt would use and checks it
// against the file: page size, page count, the file's length.
func checkHeaders(data []byte, fileSize int64) (m boltMeta, warning string, err error) {
	size := uint64(fileSize)
	m0, err0 := parseMeta(data, 0)
	var m1 boltMeta
	err1 := errors.New("missing")
	if err0 == nil {
		m1, err1 = parseMeta(data, int(m0.pageSize))
	} else {
		// The page size is in the header; without a valid first page, look
		// for the second where bbolt looks for it.
		for i := 0; i < 15 && uint64(1024<<i) < size; i++ {
			if m1, err1 = parseMeta(data, 1024<<i); err1 == nil {
				break
			}
		}
	}
	switch {
	case err0 != nil && err1 != nil:
		return m, "", fmt.Errorf("neither header page is valid (first: %v; second: %v): this is not an intact tpm-fido database", err0, err1)
	case err0 == nil && err1 == nil:
		m = m0
		if m1.txid > m0.txid {
			m = m1
		}
	case err0 == nil:
		m = m0
		if rawTxid(data, int(m0.pageSize)) > m0.txid {
			return m, "", fmt.Errorf("its newer header page (the second) is damaged (%v): the last committed change cannot be read, and the older header page would show the state as it was before it", err1)
		}
		warning = fmt.Sprintf("its older header page (the second) is damaged (%v); the newer one is intact and used", err1)
	default:
		m = m1
		if rawTxid(data, 0) > m1.txid {
			return m, "", fmt.Errorf("its newer header page (the first) is damaged (%v): the last committed change cannot be read, and the older header page would show the state as it was before it", err0)
		}
		warning = fmt.Sprintf("its older header page (the first) is damaged (%v); the newer one is intact and used", err0)
	}
	ps := uint64(m.pageSize)
	if ps < 1024 || ps > 1<<16 || ps&(ps-1) != 0 {
		return m, "", fmt.Errorf("implausible page size %d", ps)
	}
	if m.pgid < 4 || m.pgid > size/ps {
		if m.pgid > size/ps {
			return m, "", fmt.Errorf("truncated: %d bytes, but its header counts %d pages of %d bytes (%d bytes)", size, m.pgid, ps, m.pgid*ps)
		}
		return m, "", fmt.Errorf("implausible page count %d", m.pgid)
	}
	if uint64(len(data)) < m.pgid*ps {
		return m, "", fmt.Errorf("read only %d of the %d bytes in use", len(data), m.pgid*ps)
	}
	return m, warning, nil
}

// checkLayout checks the database image: its header pages, that the
// file holds every page they count, and that the tree of pages from the
// root is a tree whose every page, element, key and value lies inside
// the file, with no page both in it and free. After it, bbolt cannot
// read outside the file, nor hand out a page in use. It returns the
// header page used, and a warning when only one header page is valid.
//
// scopeFull and scopeDeep walk the whole tree; scopeStart only what Open
// reads before the full check has ended: the header pages, the free-page
// list (bbolt loads it whole when it opens the file), the pages of the
// root bucket and those of the meta bucket. It touches a few pages
// whatever the number of credentials; the full walk every page in use.
// When the header page records no free-page list, bbolt's Open walks
// every page to rebuild it, so scopeStart is the full walk then.
func checkLayout(data []byte, fileSize int64, scope checkScope) (m boltMeta, warning string, err error) {
	m, warning, err = checkHeaders(data, fileSize)
	if err != nil {
		return m, "", err
	}
	if scope == scopeStart && m.freelist == noFreelist {
		// No free-page list on disk (a bbolt with NoFreelistSync wrote
		// it): bbolt's Open rebuilds it by walking every page of the tree
		// (DB.freepages, in a goroutine no recover reaches) and commits
		// it, so all of the tree is what Open reads.
		scope = scopeFull
	}
	w := &layoutWalk{data: data, ps: uint64(m.pageSize), pgid: m.pgid, seen: newPageSet(m.pgid), free: newPageSet(m.pgid)}
	w.seen.add(0)
	w.seen.add(1)
	if scope == scopeStart {
		w.descend = func(name []byte) bool { return bytes.Equal(name, bucketMeta) }
	}
	if m.freelist != noFreelist {
		if err := w.freelist(m.freelist); err != nil {
			return m, "", err
		}
	}
	if err := w.page(m.root, 0, true); err != nil {
		return m, "", err
	}
	if scope != scopeStart {
		// Only a walk of the whole tree knows every page in use.
		if err := w.freeNotInUse(); err != nil {
			return m, "", err
		}
	}
	return m, warning, nil
}

// pageSet is a set of page ids below the high-water mark: one bit each.
type pageSet []uint64

func newPageSet(pgid uint64) pageSet { return make(pageSet, (pgid+63)/64) }
func (s pageSet) has(id uint64) bool { return s[id/64]&(1<<(id%64)) != 0 }
func (s pageSet) add(id uint64)      { s[id/64] |= 1 << (id % 64) }
func (s pageSet) overlaps(o pageSet) (uint64, bool) {
	for i := range s {
		if both := s[i] & o[i]; both != 0 {
			return uint64(i)*64 + uint64(bits.TrailingZeros64(both)), true
		}
	}
	return 0, false
}

type layoutWalk struct {
	data []byte
	ps   uint64
	pgid uint64
	seen pageSet // pages of the tree and the free-page list
	free pageSet // pages the free-page list names
	// descend, when set, limits the walk to the buckets of the root
	// bucket it names (the start check); nil walks every bucket.
	descend func(name []byte) bool
}

// span claims page id and its overflow pages and returns their bytes.
func (w *layoutWalk) span(id uint64, want uint16) ([]byte, error) {
	if id < 2 || id >= w.pgid {
		return nil, fmt.Errorf("page %d is referred to but lies outside the %d pages in use", id, w.pgid)
	}
	p := w.data[id*w.ps:]
	if got := ne.Uint64(p); got != id {
		return nil, fmt.Errorf("page %d carries the id %d", id, got)
	}
	// Exactly one type: bbolt tests for equality.
	if flags := ne.Uint16(p[8:]); flags&want == 0 || flags&^want != 0 || (want != freelistPageFlag && flags != branchPageFlag && flags != leafPageFlag) {
		return nil, fmt.Errorf("page %d has type 0x%02x where 0x%02x is expected", id, flags, want)
	}
	overflow := uint64(ne.Uint32(p[12:]))
	if overflow >= w.pgid || id+overflow >= w.pgid {
		return nil, fmt.Errorf("page %d runs past the %d pages in use", id, w.pgid)
	}
	for i := id; i <= id+overflow; i++ {
		if w.seen.has(i) {
			return nil, fmt.Errorf("page %d is referred to twice", i)
		}
		w.seen.add(i)
	}
	return w.data[id*w.ps : (id+1+overflow)*w.ps], nil
}

func (w *layoutWalk) freelist(id uint64) error {
	p, err := w.span(id, freelistPageFlag)
	if err != nil {
		return fmt.Errorf("free-page list: %w", err)
	}
	n, off := uint64(ne.Uint16(p[10:])), uint64(pageHeaderSize)
	if n == 0xFFFF {
		n, off = ne.Uint64(p[pageHeaderSize:]), pageHeaderSize+8
	}
	if n > (uint64(len(p))-off)/8 {
		return fmt.Errorf("free-page list of page %d claims %d entries, more than it holds", id, n)
	}
	for i := uint64(0); i < n; i++ {
		free := ne.Uint64(p[off+8*i:])
		if free < 2 || free >= w.pgid {
			return fmt.Errorf("free-page list names page %d, outside the %d pages in use", free, w.pgid)
		}
		if w.free.has(free) {
			return fmt.Errorf("free-page list names page %d twice", free)
		}
		w.free.add(free)
	}
	return nil
}

// freeNotInUse: a page both free and in the tree would be handed out
// while in use by the next write (bbolt panics, or overwrites data).
func (w *layoutWalk) freeNotInUse() error {
	if id, ok := w.free.overlaps(w.seen); ok {
		return fmt.Errorf("page %d is both free and in use", id)
	}
	return nil
}

// page checks a branch or leaf page and, through it, its subtree. top:
// the page belongs to the root bucket's tree.
func (w *layoutWalk) page(id uint64, depth int, top bool) error {
	if depth > maxTreeDepth {
		return fmt.Errorf("the tree is more than %d levels deep at page %d", maxTreeDepth, id)
	}
	p, err := w.span(id, branchPageFlag|leafPageFlag)
	if err != nil {
		return err
	}
	return w.elements(p, id, "", depth, top)
}

// elements checks the elements of the page image p: page id of the file,
// or an inline bucket's page inside a value of page id (inline says
// which, for the error; it is built only for inline buckets).
func (w *layoutWalk) elements(p []byte, id uint64, inline string, depth int, top bool) error {
	where := func() string { return fmt.Sprintf("page %d%s", id, inline) }
	if len(p) < pageHeaderSize {
		return fmt.Errorf("%s is shorter than a page header", where())
	}
	flags, n := ne.Uint16(p[8:]), uint64(ne.Uint16(p[10:]))
	if flags != branchPageFlag && flags != leafPageFlag {
		return fmt.Errorf("%s has type 0x%02x, neither branch nor leaf", where(), flags)
	}
	if uint64(len(p)) < pageHeaderSize+n*elementSize {
		return fmt.Errorf("%s claims %d elements, more than it holds", where(), n)
	}
	if flags == branchPageFlag && n == 0 {
		return fmt.Errorf("%s is an empty branch", where())
	}
	for i := uint64(0); i < n; i++ {
		eoff := pageHeaderSize + i*elementSize
		e := p[eoff:]
		if flags == branchPageFlag {
			pos, ksize, child := uint64(ne.Uint32(e[0:])), uint64(ne.Uint32(e[4:])), ne.Uint64(e[8:])
			if eoff+pos+ksize > uint64(len(p)) {
				return fmt.Errorf("%s: key %d lies outside the page", where(), i)
			}
			if err := w.page(child, depth+1, top); err != nil {
				return err
			}
			continue
		}
		eflags, pos, ksize, vsize := ne.Uint32(e[0:]), uint64(ne.Uint32(e[4:])), uint64(ne.Uint32(e[8:])), uint64(ne.Uint32(e[12:]))
		end := eoff + pos + ksize + vsize
		if end > uint64(len(p)) || end < eoff {
			return fmt.Errorf("%s: element %d lies outside the page", where(), i)
		}
		if eflags&bucketLeafFlag == 0 {
			continue
		}
		v := p[eoff+pos+ksize : end]
		if len(v) < bucketHeaderSize {
			return fmt.Errorf("%s: bucket %d has a short header", where(), i)
		}
		if root := ne.Uint64(v); root != 0 {
			if top && w.descend != nil && !w.descend(p[eoff+pos:eoff+pos+ksize]) {
				continue // left to the full check
			}
			if err := w.page(root, depth+1, false); err != nil {
				return err
			}
			continue
		}
		// An inline bucket: a leaf page image after the header.
		inl := v[bucketHeaderSize:]
		if len(inl) >= pageHeaderSize && ne.Uint16(inl[8:]) != leafPageFlag {
			return fmt.Errorf("%s: inline bucket %d is not a leaf", where(), i)
		}
		if err := w.elements(inl, id, fmt.Sprintf("%s, inline bucket %d", inline, i), depth+1, false); err != nil {
			return err
		}
	}
	return nil
}

// checkWithBolt opens the database read-only and runs bbolt's own
// consistency check and this package's meta checks, turning any panic or
// memory fault on the way into an error.
func checkWithBolt(path string, deep bool) (err error) {
	done := make(chan error, 1)
	go func() {
		debug.SetPanicOnFault(true)
		defer func() {
			if r := recover(); r != nil {
				done <- fmt.Errorf("unreadable structure (%v)", r)
			}
		}()
		db, err := bolt.Open(path, 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
		if err != nil {
			done <- err
			return
		}
		defer db.Close()
		if deep {
			err = db.View(func(tx *bolt.Tx) error {
				var first error
				for err := range tx.Check() { // drained: the check must end before the rollback
					if first == nil {
						first = err
					}
				}
				return first
			})
		}
		if err == nil {
			if err = checkRecords(&Store{db: db, log: slog.New(slog.DiscardHandler)}, deep); err != nil {
				err = &recordError{err}
			}
		}
		done <- err
	}()
	select {
	case err = <-done:
		return err
	case <-time.After(30 * time.Second):
		return errors.New("checking its structure did not finish in 30 s")
	}
}

// checkRecords reads the meta record through the store's own decoder (a
// fresh, empty database has none yet) and, when deep, every resident
// credential record of the current layout (an older layout's are decoded
// by the upgrade, in a transaction a bad record rolls back).
func checkRecords(s *Store, deep bool) error {
	p, err := s.readMeta()
	if err != nil || !deep || p.fresh || p.version != stateVersion {
		return err
	}
	rps, err := s.ResidentRPs()
	if err != nil {
		return err
	}
	for _, rp := range rps {
		if _, err := s.Residents(rp.Hash); err != nil {
			return err
		}
	}
	return nil
}

// DiscardState removes the state CheckState found damaged or unreadable
// in dir: the database file, or dir itself when it is not a directory. It
// refuses while another process holds the database. Callers must have
// the user's consent: every credential in the file is lost.
func DiscardState(dir string) error {
	fi, err := os.Lstat(dir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return fmt.Errorf("tpmstore: %w", err)
	}
	if !fi.IsDir() {
		if fi.Mode().Type() == fs.ModeSymlink {
			if t, err := os.Stat(dir); err == nil && t.IsDir() {
				return discardDB(StatePath(dir))
			}
		}
		if err := os.Remove(dir); err != nil {
			return fmt.Errorf("tpmstore: removing %s: %w", dir, err)
		}
		return nil
	}
	return discardDB(StatePath(dir))
}

// DiscardStateTPM is DiscardState that first removes the TPM objects the
// state recorded, its anchor key and counter index, so that a reset of
// damaged state does not leave them in the TPM. It does so only when the
// database can still be read that far, and only for objects that prove
// to be this state's: the anchor key by its recorded name, the counter
// index by taking the recorded authValue (a flipped handle must never
// remove another user's). What it could not remove is said in note.
func DiscardStateTPM(cfg Config) (note string, err error) {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	note = releaseTPMObjects(cfg)
	return note, DiscardState(cfg.Dir)
}

func releaseTPMObjects(cfg Config) string {
	const lost = "this state's TPM anchor key and counter index (if it had them) could not be named from the damaged file and stay in the TPM"
	_, err := CheckState(cfg.Dir)
	var se *StateError
	if err != nil && (!errors.As(err, &se) || !se.readable) {
		return lost
	}
	var anchor, counter tpmObject
	var anchored bool
	read := func() (err error) {
		defer func() {
			if r := recover(); r != nil {
				err = fmt.Errorf("%v", r)
			}
		}()
		db, err := bolt.Open(StatePath(cfg.Dir), 0o600, &bolt.Options{ReadOnly: true, Timeout: time.Second})
		if err != nil {
			return err
		}
		defer db.Close()
		return db.View(func(tx *bolt.Tx) error {
			m := tx.Bucket(bucketMeta)
			if m == nil {
				return nil
			}
			ah, an, ch, ca := m.Get(keyAnchorHandle), m.Get(keyAnchorName), m.Get(keyCtrIndex), m.Get(keyCtrAuth)
			if len(ah) != 4 || len(ch) != 4 || len(an) == 0 || len(ca) == 0 {
				return nil
			}
			anchored = true
			anchor = tpmObject{handle: tpm2.TPMHandle(binary.BigEndian.Uint32(ah)), name: bytes.Clone(an)}
			counter = tpmObject{handle: tpm2.TPMHandle(binary.BigEndian.Uint32(ch)), auth: bytes.Clone(ca)}
			return nil
		})
	}
	if err := read(); err != nil {
		return lost
	}
	if !anchored {
		return ""
	}
	s := &Store{tpm: cfg.TPM, log: cfg.Logger}
	var left []string
	if err := s.evictAnchor(anchor); err != nil && !errors.Is(err, errNotOurs) {
		left = append(left, fmt.Sprintf("the anchor key at 0x%08x (%v)", uint32(anchor.handle), err))
	}
	if err := s.undefineCounter(counter); err != nil && !errors.Is(err, errNotOurs) {
		left = append(left, fmt.Sprintf("the counter index at 0x%08x (%v)", uint32(counter.handle), err))
	}
	if len(left) > 0 {
		return "could not remove " + strings.Join(left, " and ") + " from the TPM"
	}
	return ""
}

// discardDB removes the database at path under an exclusive lock. A lock
// held for a moment (seen under load in tests, gone a few microseconds
// later) is waited for, up to a second, as Open waits; one held longer is
// ErrStateInUse.
func discardDB(path string) error {
	if f, err := os.Open(path); err == nil {
		defer f.Close() // releases the lock after the removal
		deadline := time.Now().Add(time.Second)
		for {
			lerr := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB)
			if !errors.Is(lerr, unix.EWOULDBLOCK) {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("%w: %s", ErrStateInUse, path)
			}
			time.Sleep(20 * time.Millisecond)
		}
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("tpmstore: removing %s: %w", path, err)
	}
	os.Remove(path + ".new") // a first run's leftover, if any
	return nil
}
