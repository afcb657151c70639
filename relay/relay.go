// Package relay lets a user's tpm-fido daemon present the FIDO HID device
// without any right on /dev/uhid. Whoever can write /dev/uhid can create
// any HID device, a keyboard included, so users get no such right: a small
// system service (`tpm-fido relay`, its own system user in group uhid)
// listens on a SOCK_SEQPACKET socket, and while a daemon of an allowed user
// is connected it keeps one uhid device — with its own fixed identity and
// report descriptor, never one the client names — and moves 64-byte
// reports between the two.
//
// The protocol: the client's first packet is a hello ("tpm-fido-relay/1
// serve" or "tpm-fido-relay/1 probe"); the relay answers "ok ..." or
// "refused ..." (text for a person). After "ok" to serve, the device
// exists; every packet from the client is one input report (at most 64
// bytes) and every packet from the relay one output report, until either
// side closes. A probe is answered and closed, and never creates a device.
package relay

import (
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// DefaultSocket is where the system service listens
// (RuntimeDirectory=tpm-fido).
const DefaultSocket = "/run/tpm-fido/relay.sock"

// DefaultUsersFile lists the users whose daemons the relay serves.
const DefaultUsersFile = "/etc/tpm-fido/relay-users"

const (
	helloServe = "tpm-fido-relay/1 serve"
	helloProbe = "tpm-fido-relay/1 probe"
	maxHello   = 512
)

// ErrRefused: the relay answered, and refused (the error's text says why).
var ErrRefused = errors.New("relay: refused")

// ErrNotRunning: nothing listens on the relay's socket.
var ErrNotRunning = errors.New("relay: not running")

// PeerCred returns the credentials (SO_PEERCRED) the kernel recorded for
// the other end of c: for a server, the connecting process's; for a
// client, the listener's. The relay and the unix: transport both check
// their peers with it.
func PeerCred(c *net.UnixConn) (*unix.Ucred, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return nil, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, err
	}
	return cred, cerr
}

// dial connects to the relay and exchanges the hello.
func dial(path, hello string, timeout time.Duration) (*net.UnixConn, string, error) {
	c, err := net.DialUnix("unixpacket", nil, &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		switch {
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ECONNREFUSED):
			return nil, "", fmt.Errorf("%w: nothing listens on %s (start it: sudo systemctl enable --now tpm-fido-relay; see tpm-fido doctor)", ErrNotRunning, path)
		case errors.Is(err, unix.EACCES):
			return nil, "", fmt.Errorf("relay: %s: permission denied (is the relay installed by `sudo tpm-fido setup`?)", path)
		}
		return nil, "", fmt.Errorf("relay: %w", err)
	}
	c.SetDeadline(time.Now().Add(timeout))
	if _, err := c.Write([]byte(hello)); err != nil {
		c.Close()
		return nil, "", fmt.Errorf("relay: sending the hello: %w", err)
	}
	buf := make([]byte, maxHello)
	n, err := c.Read(buf)
	if err != nil || n == 0 {
		c.Close()
		return nil, "", fmt.Errorf("relay: no answer from %s: %v", path, err)
	}
	c.SetDeadline(time.Time{})
	answer := string(buf[:n])
	if msg, ok := strings.CutPrefix(answer, "ok"); ok {
		return c, strings.TrimSpace(msg), nil
	}
	c.Close()
	msg, _ := strings.CutPrefix(answer, "refused")
	return nil, "", fmt.Errorf("%w: %s", ErrRefused, strings.TrimSpace(msg))
}

// Probe asks the relay at path whether it would serve this process's
// user, without creating a device. It returns the relay's answer.
func Probe(path string) (string, error) {
	c, msg, err := dial(path, helloProbe, 5*time.Second)
	if err != nil {
		return "", err
	}
	c.Close()
	return msg, nil
}

// Conn is a daemon's connection to the relay: a ctaphid.ReportDevice
// whose reports travel through the relay's uhid device.
type Conn struct {
	c *net.UnixConn
}

// Dial connects to the relay at path and asks it to create the device.
// When it returns, the device exists.
func Dial(path string) (*Conn, error) {
	c, _, err := dial(path, helloServe, 10*time.Second)
	if err != nil {
		return nil, err
	}
	return &Conn{c: c}, nil
}

// ReadReport returns the next output report the host wrote.
func (r *Conn) ReadReport(p []byte) (int, error) {
	n, err := r.c.Read(p)
	if err != nil {
		return 0, fmt.Errorf("relay: read: %w", err)
	}
	if n == 0 {
		return 0, errors.New("relay: the relay closed the connection")
	}
	return n, nil
}

// WriteReport sends one input report to the host.
func (r *Conn) WriteReport(p []byte) error {
	if len(p) > reportSize {
		return fmt.Errorf("relay: report of %d bytes, max %d", len(p), reportSize)
	}
	if _, err := r.c.Write(p); err != nil {
		return fmt.Errorf("relay: write: %w", err)
	}
	return nil
}

// Close ends the connection; the relay destroys the device.
func (r *Conn) Close() error { return r.c.Close() }
