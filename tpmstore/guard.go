package tpmstore

import (
	"fmt"
	"os"
	"runtime/debug"

	bolt "go.etcd.io/bbolt"
)

// The state database after Open's start check (docs/tpmstore.md, "Damaged
// files"): the full check of its structure, which every transaction but
// Open's first read waits for, and the guard that turns a page bbolt
// cannot read into an error instead of a crash.

// stateCheck is the full check of the state's structure (the scope of
// CheckState) that Open starts once bbolt holds the file.
type stateCheck struct {
	done chan struct{}
	err  error // nil or a *StateError; set before done is closed
}

// startStateCheck checks the database at path in a goroutine of its own.
func startStateCheck(path string) *stateCheck {
	c := &stateCheck{done: make(chan struct{})}
	go func() {
		defer close(c.done)
		c.err = checkOpenFile(path)
	}()
	return c
}

// checkOpenFile checks the layout of every page in use of the database
// at path, which this process holds open: bbolt's exclusive lock is
// ours, so no other process writes it, and this one writes only once the
// check has passed. It takes no lock of its own (a second flock by the
// same process would conflict with bbolt's).
func checkOpenFile(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return damaged(path, "cannot be opened: "+err.Error(), err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return damaged(path, "cannot be examined: "+err.Error(), err)
	}
	if _, _, err := checkFile(f, fi.Size(), scopeFull); err != nil {
		return damaged(path, err.Error(), err)
	}
	return nil
}

// Checked waits for the check of the state's structure that Open
// started and returns its result: nil, or a *StateError (ErrCorruptState)
// naming the file and the problem. Without Config.CheckInBackground it
// ended before Open returned (which then failed with its error); with it,
// every method that reads or writes the state waits for it too and fails
// with the same error.
func (s *Store) Checked() error {
	if s.check == nil {
		return nil
	}
	<-s.check.done
	return s.check.err
}

// usable is nil when transactions may run: the state check passed and
// no earlier transaction met a fault.
func (s *Store) usable() error {
	if err := s.Checked(); err != nil {
		return err
	}
	return s.broken
}

// view runs fn in a read transaction once the state is known to be
// whole (usable), guarded.
func (s *Store) view(fn func(tx *bolt.Tx) error) error {
	if err := s.usable(); err != nil {
		return err
	}
	return s.guarded(false, fn)
}

// guarded runs fn in a read or write transaction with memory faults
// turned into panics (debug.SetPanicOnFault) and every panic recovered:
// a page that cannot be read — the file truncated or overwritten while
// the store runs, an I/O error under bbolt's mapping, a wild reference
// the checks did not see — fails this call instead of killing the
// process (SIGBUS, SIGSEGV). bbolt rolls the transaction back, so
// nothing of it is written. Callers hold s.mu (or are Open).
func (s *Store) guarded(write bool, fn func(tx *bolt.Tx) error) (err error) {
	func() {
		old := debug.SetPanicOnFault(true)
		defer debug.SetPanicOnFault(old)
		defer func() {
			if r := recover(); r != nil {
				err = s.fault(r, debug.Stack())
			}
		}()
		if write {
			err = s.db.Update(fn)
		} else {
			err = s.db.View(fn)
		}
	}()
	return err
}

// fault handles a panic inside a transaction. A fresh check of the file
// says whether the state is damaged (a *StateError) or the panic is a
// fault of this program (a plain error, the stack logged). Either way
// the store stops using the database: the panic may have left bbolt's
// locks held (inside its own Begin, Commit or rollback), so every later
// transaction fails with the same error, and Close leaves the database
// to the process's exit.
func (s *Store) fault(r any, stack []byte) error {
	path := s.db.Path()
	s.log.Error("a state transaction failed", "path", path, "panic", fmt.Sprint(r), "stack", string(stack))
	err := checkOpenFile(path)
	if err != nil {
		s.log.Error("the state database is damaged: requests that need it fail until it is restored from a backup or reset (tpm-fido reset)", "path", path, "problem", err)
	} else {
		err = fmt.Errorf("tpmstore: a transaction on %s failed (%v), though its structure checks out whole", path, r)
	}
	s.broken, s.faulted = err, true
	return err
}

// fileWhole refuses a write to a database file shorter than the pages
// its transaction counts: it was truncated under the running store, and
// bbolt would write its new pages beyond a hole. The state is then
// damaged for every later transaction.
func (s *Store) fileWhole(tx *bolt.Tx) error {
	path := s.db.Path()
	fi, err := os.Stat(path)
	if err != nil {
		return fmt.Errorf("tpmstore: %w", err)
	}
	if fi.Size() < tx.Size() {
		err := damaged(path, fmt.Sprintf("truncated while in use: %d bytes, but %d bytes of pages in use", fi.Size(), tx.Size()), nil)
		s.log.Error("the state database is damaged: requests that need it fail until it is restored from a backup or reset (tpm-fido reset)", "path", path, "problem", err)
		s.broken = err
		return err
	}
	return nil
}
