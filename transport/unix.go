package transport

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"os"
	"sync"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
)

// writeTimeout bounds how long one client's full socket buffer may hold
// up a report; the client is dropped after that.
const writeTimeout = time.Second

// Unix serves 64-byte reports on a SOCK_SEQPACKET socket. Every accepted
// connection is like one process that opened the hidraw node: reports
// from all connections are merged into ReadReport and every written
// report goes to every connection; CTAPHID channel ids keep clients apart.
type Unix struct {
	ln   *net.UnixListener
	path string
	log  *slog.Logger

	in   chan []byte
	done chan struct{}

	mu    sync.Mutex
	conns map[*net.UnixConn]struct{}
	once  sync.Once
	wg    sync.WaitGroup
}

// ListenUnix listens on path (a stale socket there is replaced; any
// other file is an error). The socket is mode 0600.
func ListenUnix(path string, log *slog.Logger) (*Unix, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("transport: %s exists and is not a socket", path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("transport: removing stale socket: %w", err)
		}
	}
	// Bind under a temporary name, restrict it to 0600, then rename it
	// into place: nobody else can connect in between.
	tmp := fmt.Sprintf("%s.%d.tmp", path, os.Getpid())
	os.Remove(tmp)
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: tmp, Net: "unixpacket"})
	if err != nil {
		return nil, fmt.Errorf("transport: listening on %s: %w", path, err)
	}
	ln.SetUnlinkOnClose(false)
	if err := os.Chmod(tmp, 0o600); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("transport: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		ln.Close()
		os.Remove(tmp)
		return nil, fmt.Errorf("transport: %w", err)
	}
	u := &Unix{
		ln:    ln,
		path:  path,
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
	})
	return err
}
