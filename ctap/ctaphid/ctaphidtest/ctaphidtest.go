// Package ctaphidtest is the host side of the CTAPHID seam for tests,
// benchmarks and the load test: an in-memory report pipe (the device end
// implements ctaphid.ReportDevice, the host end plays hidraw), a small
// CTAPHID client that frames messages, skips KEEPALIVE frames and
// reassembles responses, and on top of it a small FIDO2 platform
// (Channel: CTAP2 requests; Session: the platform side of PIN/UV auth
// protocols 1 and 2), written from the specifications independently of
// the authenticator.
package ctaphidtest

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
)

// ErrTimeout is returned by Host.ReadReport and the Client when no report
// arrives within the timeout.
var ErrTimeout = errors.New("ctaphidtest: timed out waiting for a report")

// Pipe is an in-memory connection between a host and a device.
type Pipe struct {
	toDev  chan []byte
	toHost chan []byte
	done   chan struct{}
	once   sync.Once
}

// NewPipe returns an open pipe. Reports are copied; each direction
// buffers a few reports, then the writer blocks like a full HID queue.
func NewPipe() *Pipe {
	return &Pipe{
		toDev:  make(chan []byte, 16),
		toHost: make(chan []byte, 256),
		done:   make(chan struct{}),
	}
}

// Device returns the authenticator end (a ctaphid.ReportDevice).
func (p *Pipe) Device() *Device { return &Device{p} }

// Host returns the client end. Its reads time out after timeout (zero
// means five seconds).
func (p *Pipe) Host(timeout time.Duration) *Host {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	return &Host{p: p, timeout: timeout}
}

// Close closes both ends; pending reads return net.ErrClosed.
func (p *Pipe) Close() error {
	p.once.Do(func() { close(p.done) })
	return nil
}

// Device is the authenticator end of a Pipe.
type Device struct{ p *Pipe }

// ReadReport returns the next report the host wrote.
func (d *Device) ReadReport(b []byte) (int, error) {
	select {
	case r := <-d.p.toDev:
		return copy(b, r), nil
	case <-d.p.done:
		return 0, fmt.Errorf("ctaphidtest: read: %w", net.ErrClosed)
	}
}

// WriteReport hands a report to the host.
func (d *Device) WriteReport(b []byte) error {
	r := append([]byte(nil), b...)
	select {
	case d.p.toHost <- r:
		return nil
	case <-d.p.done:
		return fmt.Errorf("ctaphidtest: write: %w", net.ErrClosed)
	}
}

// Close closes the pipe.
func (d *Device) Close() error { return d.p.Close() }

// Host is the client end of a Pipe.
type Host struct {
	p       *Pipe
	timeout time.Duration
}

// WriteReport sends an output report to the device.
func (h *Host) WriteReport(b []byte) error {
	r := append([]byte(nil), b...)
	select {
	case h.p.toDev <- r:
		return nil
	case <-h.p.done:
		return fmt.Errorf("ctaphidtest: write: %w", net.ErrClosed)
	}
}

// ReadReport waits for the device's next input report.
func (h *Host) ReadReport(b []byte) (int, error) {
	t := time.NewTimer(h.timeout)
	defer t.Stop()
	select {
	case r := <-h.p.toHost:
		return copy(b, r), nil
	case <-h.p.done:
		return 0, fmt.Errorf("ctaphidtest: read: %w", net.ErrClosed)
	case <-t.C:
		return 0, ErrTimeout
	}
}

// Close closes the pipe.
func (h *Host) Close() error { return h.p.Close() }

// Conn is what a Client needs from the host side of any transport. Its
// ReadReport must give up after some timeout rather than block forever.
type Conn interface {
	WriteReport(p []byte) error
	ReadReport(p []byte) (int, error)
}

// Frame is one reassembled CTAPHID message from the device.
type Frame struct {
	CID     uint32
	Cmd     byte // without the 0x80 bit
	Payload []byte
	At      time.Time // arrival of its first report
}

// Client is a minimal CTAPHID host.
type Client struct {
	Conn Conn
	// OnKeepalive, if set, sees each KEEPALIVE frame Transact skips.
	OnKeepalive func(Frame)
}

// Close closes the client's connection when it can be closed (a Pipe's
// Host, DialUnix's socket, LoopbackUDP's socket).
func (c *Client) Close() error {
	if cl, ok := c.Conn.(interface{ Close() error }); ok {
		return cl.Close()
	}
	return nil
}

// Send frames payload as one message on cid.
func (c *Client) Send(cid uint32, cmd byte, payload []byte) error {
	for _, p := range ctaphid.EncodeMessage(cid, cmd, payload) {
		if err := c.Conn.WriteReport(p); err != nil {
			return err
		}
	}
	return nil
}

// Recv reads one whole message (any channel, any command, KEEPALIVE
// included).
func (c *Client) Recv() (Frame, error) {
	buf := make([]byte, ctaphid.ReportSize)
	n, err := c.Conn.ReadReport(buf)
	if err != nil {
		return Frame{}, err
	}
	if n < 7 || buf[4]&0x80 == 0 {
		return Frame{}, fmt.Errorf("ctaphidtest: expected an init packet, got % x", buf[:n])
	}
	f := Frame{CID: binary.BigEndian.Uint32(buf[0:4]), Cmd: buf[4] &^ 0x80, At: time.Now()}
	bcnt := int(binary.BigEndian.Uint16(buf[5:7]))
	if bcnt > ctaphid.MaxMessageSize {
		return Frame{}, fmt.Errorf("ctaphidtest: response length %d too large", bcnt)
	}
	f.Payload = append(f.Payload, buf[7:7+min(bcnt, ctaphid.ReportSize-7)]...)
	for seq := byte(0); len(f.Payload) < bcnt; seq++ {
		n, err := c.Conn.ReadReport(buf)
		if err != nil {
			return Frame{}, err
		}
		if n < 5 || binary.BigEndian.Uint32(buf[0:4]) != f.CID || buf[4] != seq {
			return Frame{}, fmt.Errorf("ctaphidtest: bad continuation packet % x (want seq %d)", buf[:min(n, 8)], seq)
		}
		f.Payload = append(f.Payload, buf[5:5+min(bcnt-len(f.Payload), ctaphid.ReportSize-5)]...)
	}
	return f, nil
}

// Transact sends a message and returns the response on the same channel,
// skipping KEEPALIVE frames. An ERROR frame comes back as a Frame with
// Cmd == ctaphid.CmdError, not as an error.
func (c *Client) Transact(cid uint32, cmd byte, payload []byte) (Frame, error) {
	if err := c.Send(cid, cmd, payload); err != nil {
		return Frame{}, err
	}
	return c.RecvOn(cid)
}

// RecvOn reads messages until one on cid that is not a KEEPALIVE.
func (c *Client) RecvOn(cid uint32) (Frame, error) {
	for {
		f, err := c.Recv()
		if err != nil {
			return Frame{}, err
		}
		if f.CID != cid {
			continue
		}
		if f.Cmd == ctaphid.CmdKeepalive {
			if c.OnKeepalive != nil {
				c.OnKeepalive(f)
			}
			continue
		}
		return f, nil
	}
}

// Init allocates a channel with a broadcast INIT and checks the nonce.
func (c *Client) Init() (uint32, error) {
	// A random nonce, and answers with another nonce skipped: INIT
	// answers go out on the broadcast channel, which other hosts on the
	// same device see too.
	nonce := make([]byte, 8)
	if _, err := rand.Read(nonce); err != nil {
		return 0, err
	}
	if err := c.Send(ctaphid.BroadcastCID, ctaphid.CmdInit, nonce); err != nil {
		return 0, err
	}
	for {
		f, err := c.RecvOn(ctaphid.BroadcastCID)
		if err != nil {
			return 0, err
		}
		if f.Cmd != ctaphid.CmdInit || len(f.Payload) < 17 {
			return 0, fmt.Errorf("ctaphidtest: bad INIT response cmd 0x%02x % x", f.Cmd, f.Payload)
		}
		if bytes.Equal(f.Payload[:8], nonce) {
			return binary.BigEndian.Uint32(f.Payload[8:12]), nil
		}
	}
}

// Server is what Serve runs: a ctaphid.Server, the relay's server,
// anything that serves until its context ends.
type Server interface {
	Serve(ctx context.Context) error
}

// Serve runs s in the background until stop is called or the test ends,
// whichever comes first, and waits for it; an error from s.Serve fails t.
func Serve(t testing.TB, s Server) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- s.Serve(ctx) }()
	var once sync.Once
	stop = func() {
		once.Do(func() {
			cancel()
			if err := <-errc; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
	t.Cleanup(stop)
	return stop
}
