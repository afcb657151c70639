package transport

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"

	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
	"github.com/tpm-fido/tpm-fido/relay"
)

// writeTimeout bounds how long one client's full socket buffer may hold
// up a report; the client is dropped after that.
const writeTimeout = time.Second

// Unix serves 64-byte reports on a SOCK_SEQPACKET socket. Every accepted
// connection is like one process that opened the hidraw node: reports
// from all connections are merged into ReadReport and every written
// report goes to every connection; CTAPHID channel ids keep clients apart.
//
// Only processes of the same user may talk to it: the socket is mode 0600
// in a directory only its owner can enter, and every connection's peer
// uid (SO_PEERCRED) is checked on accept.
type Unix struct {
	ln   *net.UnixListener
	path string
	lock *os.File // flock held while listening (see ListenUnix)
	uid  int      // the only peer uid accepted
	log  *slog.Logger

	in   chan []byte
	done chan struct{}

	mu    sync.Mutex
	conns map[*net.UnixConn]struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

// Errors from ListenUnix.
var (
	// ErrInUse: another live process serves the socket path.
	ErrInUse = errors.New("transport: the socket is served by another process")
	// ErrUnsafeDir: the socket's directory is open to other users.
	ErrUnsafeDir = errors.New("transport: the socket's directory is open to other users")
)

// ListenUnix listens on path. The socket's directory is created (0700)
// if missing and must otherwise belong to this user and be closed to
// everybody else (no group or other permission bits): ErrUnsafeDir. A
// socket that a live process still serves is never replaced: ErrInUse,
// naming that process's pid when the kernel tells it. A stale socket is
// replaced; any other file at path is an error. The socket is mode 0600.
//
// While listening, the process holds an flock on path+".lock", so two
// daemons started at once cannot both take the path; the lock file stays
// behind (empty) after Close.
func ListenUnix(path string, log *slog.Logger) (*Unix, error) {
	return listenUnix(path, log, os.Geteuid())
}

// listenUnix is ListenUnix accepting peers of uid only (tests pretend to
// be another user with it).
func listenUnix(path string, log *slog.Logger, uid int) (*Unix, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := privateDir(filepath.Dir(path)); err != nil {
		return nil, err
	}
	lock, err := lockPath(path)
	if err != nil {
		return nil, err
	}
	// Bound under a temporary name, restricted to 0600, then renamed into
	// place: nobody else can connect in between.
	ln, pid, err := relay.BindSocket(path, 0o600)
	switch {
	case err != nil:
		err = fmt.Errorf("transport: %w", err)
	case ln == nil:
		err = inUse(path, pid)
	}
	if err != nil {
		lock.Close()
		return nil, err
	}
	u := &Unix{
		ln:    ln,
		path:  path,
		lock:  lock,
		uid:   uid,
		log:   log,
		in:    make(chan []byte),
		done:  make(chan struct{}),
		conns: make(map[*net.UnixConn]struct{}),
	}
	u.wg.Add(1)
	go u.accept()
	log.Info("listening for CTAPHID reports", "transport", "unix", "path", path)
	return u, nil
}

// privateDir makes sure dir exists, belongs to this user and has no
// permission bits for group or others.
func privateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("transport: creating the socket directory: %w", err)
	}
	return checkPrivateDir(dir)
}

// checkPrivateDir is privateDir's check of an existing dir.
func checkPrivateDir(dir string) error {
	fi, err := os.Stat(dir)
	if err != nil {
		return fmt.Errorf("transport: %w", err)
	}
	if !fi.IsDir() {
		return fmt.Errorf("transport: %s is not a directory", dir)
	}
	if st, ok := fi.Sys().(*syscall.Stat_t); ok && int(st.Uid) != os.Geteuid() {
		return fmt.Errorf("%w: %s belongs to uid %d, not to this user (uid %d); put the socket in a directory of your own, e.g. $XDG_RUNTIME_DIR/tpm-fido/",
			ErrUnsafeDir, dir, st.Uid, os.Geteuid())
	}
	if perm := fi.Mode().Perm(); perm&0o077 != 0 {
		return fmt.Errorf("%w: %s has mode %04o; put the socket in a directory only you can enter (mode 0700), e.g. $XDG_RUNTIME_DIR/tpm-fido/",
			ErrUnsafeDir, dir, perm)
	}
	return nil
}

// lockPath takes an exclusive flock on path+".lock" without waiting. If
// another process holds it, the error is ErrInUse with that process's
// pid as the socket reports it.
func lockPath(path string) (*os.File, error) {
	f, err := os.OpenFile(path+".lock", os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("transport: lock file: %w", err)
	}
	if err := unix.Flock(int(f.Fd()), unix.LOCK_EX|unix.LOCK_NB); err != nil {
		f.Close()
		if errors.Is(err, unix.EWOULDBLOCK) {
			return nil, inUse(path, relay.ServingPID(path))
		}
		return nil, fmt.Errorf("transport: locking %s.lock: %w", path, err)
	}
	return f, nil
}

func inUse(path string, pid int) error {
	who := "another process"
	if pid > 0 {
		who = fmt.Sprintf("another process (pid %d)", pid)
	}
	return fmt.Errorf("%w: %s serves %s; stop it first or choose another path", ErrInUse, who, path)
}

func (u *Unix) accept() {
	defer u.wg.Done()
	for {
		c, err := u.ln.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) {
				u.log.Warn("transport: accept failed", "err", err)
			}
			return
		}
		if cred, err := relay.PeerCred(c); err != nil || int(cred.Uid) != u.uid {
			uid, pid := -1, -1
			if err == nil {
				uid, pid = int(cred.Uid), int(cred.Pid)
			}
			u.log.Warn("transport: refused a client of another user", "uid", uid, "pid", pid, "err", err)
			c.Close()
			continue
		}
		u.mu.Lock()
		select {
		case <-u.done:
			u.mu.Unlock()
			c.Close()
			return
		default:
		}
		u.conns[c] = struct{}{}
		u.mu.Unlock()
		u.log.Debug("transport: client connected")
		u.wg.Add(1)
		go u.read(c)
	}
}

func (u *Unix) read(c *net.UnixConn) {
	defer u.wg.Done()
	defer u.drop(c)
	for {
		buf := make([]byte, ctaphid.ReportSize+1)
		n, err := c.Read(buf)
		if err != nil || n == 0 {
			u.log.Debug("transport: client gone", "err", err)
			return
		}
		if n > ctaphid.ReportSize {
			u.log.Debug("transport: oversized report dropped", "len", n)
			continue
		}
		select {
		case u.in <- buf[:n]:
		case <-u.done:
			return
		}
	}
}

func (u *Unix) drop(c *net.UnixConn) {
	u.mu.Lock()
	delete(u.conns, c)
	u.mu.Unlock()
	c.Close()
}

// ReadReport returns the next report from any client.
func (u *Unix) ReadReport(p []byte) (int, error) {
	select {
	case r := <-u.in:
		return copy(p, r), nil
	case <-u.done:
		return 0, fmt.Errorf("transport: unix read: %w", net.ErrClosed)
	}
}

// WriteReport sends the report to every connected client. A client
// whose write fails is dropped.
func (u *Unix) WriteReport(p []byte) error {
	select {
	case <-u.done:
		return fmt.Errorf("transport: unix write: %w", net.ErrClosed)
	default:
	}
	u.mu.Lock()
	conns := make([]*net.UnixConn, 0, len(u.conns))
	for c := range u.conns {
		conns = append(conns, c)
	}
	u.mu.Unlock()
	for _, c := range conns {
		// A client that stops reading must not stall the others.
		c.SetWriteDeadline(time.Now().Add(writeTimeout))
		if _, err := c.Write(p); err != nil {
			u.log.Debug("transport: dropping client after write error", "err", err)
			c.Close() // its reader goroutine removes it
		}
	}
	return nil
}

// Close stops listening, disconnects every client and removes the socket.
func (u *Unix) Close() error {
	var err error
	u.once.Do(func() {
		u.mu.Lock()
		close(u.done)
		for c := range u.conns {
			c.Close()
		}
		u.mu.Unlock()
		err = u.ln.Close()
		if rerr := os.Remove(u.path); rerr != nil && !errors.Is(rerr, fs.ErrNotExist) && err == nil {
			err = fmt.Errorf("transport: removing socket: %w", rerr)
		}
		u.wg.Wait()
		u.lock.Close() // releases the flock
	})
	return err
}
