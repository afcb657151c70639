package ctaphidtest

import (
	"errors"
	"fmt"
	"net"
	"time"
)

// The host side of the daemon's socket transports.

// NetConn adapts a connected socket carrying one report per packet
// (SOCK_SEQPACKET, or UDP) to Conn, with a read timeout (zero means five
// seconds). It closes with the socket.
func NetConn(c net.Conn, timeout time.Duration) Conn {
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	return &netConn{c: c, timeout: timeout}
}

type netConn struct {
	c       net.Conn
	timeout time.Duration
}

func (n *netConn) WriteReport(p []byte) error {
	_, err := n.c.Write(p)
	return err
}

func (n *netConn) ReadReport(p []byte) (int, error) {
	if err := n.c.SetReadDeadline(time.Now().Add(n.timeout)); err != nil {
		return 0, err
	}
	k, err := n.c.Read(p)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return 0, fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	return k, err
}

func (n *netConn) Close() error { return n.c.Close() }

// DialUnix connects a Client to the SOCK_SEQPACKET socket of a unix:
// transport; its reads time out after timeout (zero: five seconds).
// Client.Close closes the connection.
func DialUnix(path string, timeout time.Duration) (*Client, error) {
	c, err := net.Dial("unixpacket", path)
	if err != nil {
		return nil, err
	}
	return &Client{Conn: NetConn(c, timeout)}, nil
}

// DialChannel is DialUnix and OpenChannel; Channel.Close closes the
// connection.
func DialChannel(path string, timeout time.Duration) (*Channel, error) {
	c, err := DialUnix(path, timeout)
	if err != nil {
		return nil, err
	}
	ch, err := c.OpenChannel()
	if err != nil {
		c.Close()
		return nil, err
	}
	return ch, nil
}

// LoopbackUDP prepares the host side of a udp:LISTEN,REPLY transport on
// loopback: it binds the reply socket on a free port and picks another
// free port for the authenticator to listen on. spec is the transport's
// --transport value; the Client sends to LISTEN and reads what arrives at
// REPLY, timing out after timeout (zero: five seconds). Client.Close
// closes the socket.
func LoopbackUDP(timeout time.Duration) (spec string, c *Client, err error) {
	reply, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		return "", nil, err
	}
	l, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		reply.Close()
		return "", nil, err
	}
	listen := l.LocalAddr().(*net.UDPAddr)
	l.Close()
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	spec = "udp:" + listen.String() + "," + reply.LocalAddr().String()
	return spec, &Client{Conn: &udpConn{c: reply, to: listen, timeout: timeout}}, nil
}

type udpConn struct {
	c       *net.UDPConn
	to      *net.UDPAddr
	timeout time.Duration
}

func (u *udpConn) WriteReport(p []byte) error {
	_, err := u.c.WriteToUDP(p, u.to)
	return err
}

func (u *udpConn) ReadReport(p []byte) (int, error) {
	if err := u.c.SetReadDeadline(time.Now().Add(u.timeout)); err != nil {
		return 0, err
	}
	n, _, err := u.c.ReadFromUDP(p)
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return 0, fmt.Errorf("%w: %w", ErrTimeout, err)
	}
	return n, err
}

func (u *udpConn) Close() error { return u.c.Close() }
