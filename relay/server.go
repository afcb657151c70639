package relay

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"os/user"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
)

// Device is the HID device the relay keeps while a daemon is connected:
// uhid's in production, a fake in tests.
type Device interface {
	ctaphid.ReportDevice
	Close() error
}

// reportSize is the size of a report both ways: a CTAPHID packet.
const reportSize = ctaphid.ReportSize

// Config configures Listen.
type Config struct {
	Socket string // DefaultSocket when empty
	// UsersFile names the users (or numeric uids) whose daemons are
	// served, one per line, '#' comments. Read again at every connection,
	// so a change needs no restart. Empty: only Allow.
	UsersFile string
	Allow     []string // more users or uids, from the command line
	// OpenDevice creates the device. The relay alone decides what it is.
	OpenDevice func() (Device, error)
	// SeatsDir holds logind's records of the seats (DefaultSeatsDir when
	// empty): the relay reads who is active at each seat, to warn when
	// the key's node goes to someone else than the user it serves.
	SeatsDir string
	Logger   *slog.Logger
}

// Server is the relay's listening side.
type Server struct {
	cfg Config
	ln  *net.UnixListener
	log *slog.Logger

	mu     sync.Mutex
	active *session // the connected daemon, if any
	closed bool
	// waiting counts, per uid, the connections whose hello has not come
	// yet (maxWaitingPerUID).
	waiting map[int]int
	wg      sync.WaitGroup
}

// maxWaitingPerUID bounds the connections of one user that wait for
// their hello (each up to helloTimeout): every local user may connect,
// and without a bound one could make the relay hold a descriptor, a
// goroutine and a buffer for each of as many connections as it opens.
// A daemon needs one; more are closed at once.
const maxWaitingPerUID = 4

// helloTimeout is how long a connection may take to say hello.
const helloTimeout = 5 * time.Second

// admit counts a connection of uid that waits for its hello, unless uid
// has maxWaitingPerUID of them already.
func (s *Server) admit(uid int) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.waiting[uid] >= maxWaitingPerUID {
		return false
	}
	if s.waiting == nil {
		s.waiting = map[int]int{}
	}
	s.waiting[uid]++
	return true
}

// helloDone ends what admit counted.
func (s *Server) helloDone(uid int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.waiting[uid]--; s.waiting[uid] <= 0 {
		delete(s.waiting, uid)
	}
}

type session struct {
	uid, pid int
	conn     *net.UnixConn
	dev      Device
}

// Listen creates the relay's socket: mode 0666, since every local user
// may ask and the relay decides by the asker's uid (SO_PEERCRED). Its
// directory is created 0755 when missing (systemd's RuntimeDirectory=
// makes it). A socket a live relay serves is never replaced.
func Listen(cfg Config) (*Server, error) {
	if cfg.Socket == "" {
		cfg.Socket = DefaultSocket
	}
	if cfg.OpenDevice == nil {
		return nil, errors.New("relay: Config.OpenDevice is nil")
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Socket), 0o755); err != nil {
		return nil, fmt.Errorf("relay: %w", err)
	}
	// Bound under a temporary name, opened to everyone, then moved into
	// place (the mode is not left to the umask).
	ln, pid, err := BindSocket(cfg.Socket, 0o666)
	switch {
	case err != nil:
		return nil, fmt.Errorf("relay: %w", err)
	case ln == nil:
		return nil, fmt.Errorf("relay: another relay (pid %d) serves %s", pid, cfg.Socket)
	}
	log.Info("relay listening", "socket", cfg.Socket, "users-file", cfg.UsersFile, "allow", cfg.Allow)
	return &Server{cfg: cfg, ln: ln, log: log}, nil
}

// BindSocket listens (SOCK_SEQPACKET) on path, with the socket at mode.
// A socket already at path is probed first: one that answers is someone's
// live socket and is left alone (ln is nil, pid is its process's as
// ServingPID returns it); one that refuses is stale and replaced. Any
// other file at path is an error. The socket is bound under a temporary
// name, given its mode and renamed into place, so nobody can connect
// before it has its mode. The relay and the unix: transport both listen
// with it.
func BindSocket(path string, mode fs.FileMode) (ln *net.UnixListener, pid int, err error) {
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, 0, fmt.Errorf("%s exists and is not a socket", path)
		}
		if pid := ServingPID(path); pid != 0 {
			return nil, pid, nil
		}
		if err := os.Remove(path); err != nil {
			return nil, 0, fmt.Errorf("removing a stale socket: %w", err)
		}
	}
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	os.Remove(tmp)
	ln, err = net.ListenUnix("unixpacket", &net.UnixAddr{Name: tmp, Net: "unixpacket"})
	if err != nil {
		return nil, 0, fmt.Errorf("listening on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	err = os.Chmod(tmp, mode)
	if err == nil {
		err = os.Rename(tmp, path)
	}
	if err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, 0, err
	}
	return ln, 0, nil
}

// ServingPID connects to the socket at path and returns the pid of the
// process listening on it (SO_PEERCRED of a connected client is the
// listener's), -1 if one answers but the pid is unknown, and 0 if
// nothing answers.
func ServingPID(path string) int {
	c, err := net.DialTimeout("unixpacket", path, time.Second)
	if err != nil {
		return 0
	}
	defer c.Close()
	cred, err := PeerCred(c.(*net.UnixConn))
	if err != nil || cred.Pid <= 0 {
		return -1
	}
	return int(cred.Pid)
}

// Serve accepts daemons until ctx is done, then destroys the device and
// removes the socket.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.shutdown() })
	defer stop()
	var delay time.Duration
	for {
		c, err := s.ln.AcceptUnix()
		if err != nil {
			if !errors.Is(err, net.ErrClosed) && ctx.Err() == nil {
				// Every local user may connect, so running out of file
				// descriptors (or memory) must not end the service, and
				// the device of the daemon it serves with it: wait, and
				// accept again as the connections that hold them end.
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				s.log.Warn("relay: accept failed; retrying", "err", err, "in", delay)
				select {
				case <-time.After(delay):
					continue
				case <-ctx.Done():
				}
			}
			s.shutdown()
			s.wg.Wait()
			if ctx.Err() != nil {
				return nil
			}
			return fmt.Errorf("relay: accept: %w", err)
		}
		delay = 0
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(c)
		}()
	}
}

func (s *Server) shutdown() {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return
	}
	s.closed = true
	a := s.active
	s.mu.Unlock()
	s.ln.Close()
	os.Remove(s.cfg.Socket)
	if a != nil {
		a.conn.Close() // the session ends and destroys the device
	}
}

// allowed reports whether uid may use the relay, reading the users file.
// A line is a uid, or a user name resolved as os/user does: the release
// binary has no cgo, so only /etc/passwd is read, and a user that only
// NSS knows (LDAP, sssd, systemd-homed) must be listed by uid (setup
// writes uids). Names that do not resolve are returned in unresolved.
func (s *Server) allowed(uid int) (ok bool, unresolved []string, err error) {
	names := append([]string(nil), s.cfg.Allow...)
	if s.cfg.UsersFile != "" {
		f, err := os.Open(s.cfg.UsersFile)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return false, nil, err
		default:
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				line, _, _ := strings.Cut(sc.Text(), "#")
				if line = strings.TrimSpace(line); line != "" {
					names = append(names, line)
				}
			}
			f.Close()
			if err := sc.Err(); err != nil {
				return false, nil, err
			}
		}
	}
	for _, n := range names {
		if id, err := strconv.Atoi(n); err == nil {
			if id == uid {
				return true, nil, nil
			}
			continue
		}
		u, err := user.Lookup(n)
		if err != nil {
			unresolved = append(unresolved, n)
			continue
		}
		if u.Uid == strconv.Itoa(uid) {
			return true, nil, nil
		}
	}
	return false, unresolved, nil
}

func reply(c *net.UnixConn, msg string) {
	c.SetWriteDeadline(time.Now().Add(time.Second))
	c.Write([]byte(msg))
}

func (s *Server) handle(c *net.UnixConn) {
	defer c.Close()
	cred, err := PeerCred(c)
	if err != nil {
		s.log.Warn("relay: no peer credentials; connection closed", "err", err)
		return
	}
	uid, pid := int(cred.Uid), int(cred.Pid)
	if !s.admit(uid) {
		s.log.Debug("relay: too many connections of one user waiting to say hello; closed", "uid", uid, "pid", pid)
		return
	}
	c.SetReadDeadline(time.Now().Add(helloTimeout))
	buf := make([]byte, maxHello)
	n, err := c.Read(buf)
	s.helloDone(uid)
	if err != nil {
		s.log.Debug("relay: no hello", "uid", uid, "pid", pid, "err", err)
		return
	}
	c.SetReadDeadline(time.Time{})
	hello := string(buf[:n])
	if hello != helloServe && hello != helloProbe {
		s.log.Warn("relay: unknown hello; connection closed", "uid", uid, "pid", pid)
		reply(c, "refused unknown hello (this relay speaks tpm-fido-relay/1)")
		return
	}
	ok, unresolved, err := s.allowed(uid)
	if err != nil {
		s.log.Error("relay: reading the allowed users", "file", s.cfg.UsersFile, "err", err)
		reply(c, "refused the relay cannot read its list of users: "+err.Error())
		return
	}
	if !ok {
		s.log.Warn("relay: refused a daemon of a user that is not allowed", "uid", uid, "pid", pid)
		if len(unresolved) > 0 {
			s.log.Warn("relay: the list names users this relay cannot resolve (it reads only /etc/passwd); list them by uid (tpm-fido setup --allow-user writes uids)",
				"file", s.cfg.UsersFile, "names", unresolved)
		}
		reply(c, fmt.Sprintf("refused uid %d may not use the relay; an administrator adds the user to %s (sudo tpm-fido setup --allow-user NAME)", uid, s.cfg.UsersFile))
		return
	}
	s.mu.Lock()
	busy, closed := s.active, s.closed
	if hello == helloProbe {
		s.mu.Unlock()
		if busy != nil {
			reply(c, fmt.Sprintf("ok uid %d is allowed; the key is served by uid %d (pid %d)", uid, busy.uid, busy.pid))
		} else {
			reply(c, fmt.Sprintf("ok uid %d is allowed; no daemon is connected", uid))
		}
		return
	}
	if busy != nil || closed {
		s.mu.Unlock()
		msg := "refused the relay is stopping"
		if busy != nil {
			msg = fmt.Sprintf("refused the key is already served by uid %d (pid %d)", busy.uid, busy.pid)
		}
		s.log.Warn("relay: "+strings.TrimPrefix(msg, "refused "), "uid", uid, "pid", pid)
		reply(c, msg)
		return
	}
	sess := &session{uid: uid, pid: pid, conn: c}
	s.active = sess
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		s.active = nil
		s.mu.Unlock()
	}()
	dev, err := s.cfg.OpenDevice()
	if err != nil {
		s.log.Error("relay: creating the device", "err", err)
		reply(c, "refused the relay cannot create the device: "+err.Error())
		return
	}
	sess.dev = dev
	s.log.Info("relay: device created for a daemon", "uid", uid, "pid", pid)
	s.warnOtherSeatUser(uid)
	reply(c, "ok device created")
	s.pump(sess)
	if err := dev.Close(); err != nil {
		s.log.Warn("relay: destroying the device", "err", err)
	}
	s.log.Info("relay: daemon gone, device destroyed", "uid", uid, "pid", pid)
}

// DefaultSeatsDir is where systemd-logind records each seat's state.
const DefaultSeatsDir = "/run/systemd/seats"

// warnOtherSeatUser logs a warning when logind names an active user at
// a seat and none of them is uid. The key's hidraw node is tagged
// uaccess, so logind gives it to the user active at the seat, whoever
// the daemon behind it serves: then that user's programs can use the
// key, and the served user's cannot. The relay reads logind's files
// (ACTIVE_UID= in /run/systemd/seats/SEAT), without D-Bus; it looks at
// connect time only, not at later seat switches.
func (s *Server) warnOtherSeatUser(uid int) {
	dir := cmp.Or(s.cfg.SeatsDir, DefaultSeatsDir)
	ents, err := os.ReadDir(dir)
	if err != nil {
		return // no logind: no seat, no uaccess
	}
	var others []string
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		for _, l := range strings.Split(string(b), "\n") {
			v, ok := strings.CutPrefix(l, "ACTIVE_UID=")
			if !ok {
				continue
			}
			if v == strconv.Itoa(uid) {
				return
			}
			others = append(others, e.Name()+": uid "+v)
		}
	}
	if len(others) > 0 {
		s.log.Warn("relay: the user active at the seat is not the user whose daemon is served; the key's hidraw node goes (uaccess) to the seat's user, so that user's programs can use this key and the served user's cannot",
			"uid", uid, "seats", strings.Join(others, ", "))
	}
}

// pump moves reports until either side ends: the client's packets become
// input reports, the device's output reports go to the client.
func (s *Server) pump(sess *session) {
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, reportSize+1)
		for {
			n, err := sess.conn.Read(buf)
			if err != nil || n == 0 {
				return
			}
			if n > reportSize {
				s.log.Warn("relay: oversized report from the daemon dropped", "len", n)
				continue
			}
			if err := sess.dev.WriteReport(buf[:n]); err != nil {
				s.log.Warn("relay: writing to the device", "err", err)
				return
			}
		}
	}()
	out := make(chan []byte)
	go func() {
		defer close(out)
		for {
			buf := make([]byte, reportSize)
			n, err := sess.dev.ReadReport(buf)
			if err != nil {
				return
			}
			select {
			case out <- buf[:n]:
			case <-done:
				return
			}
		}
	}()
	for {
		select {
		case <-done:
			// The daemon went: closing the device ends ReadReport.
			sess.dev.Close()
			for range out {
			}
			return
		case r, ok := <-out:
			if !ok {
				sess.conn.Close()
				<-done
				return
			}
			// A daemon that stops reading must not hold the device.
			sess.conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
			if _, err := sess.conn.Write(r); err != nil {
				s.log.Warn("relay: writing to the daemon; disconnecting it", "err", err)
				sess.conn.Close()
				sess.dev.Close()
				<-done
				for range out {
				}
				return
			}
		}
	}
}
