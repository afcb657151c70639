package transport

import (
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"

	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
)

// ErrNotLoopback is returned when a UDP address is not a loopback one:
// the UDP transport has no authentication, so it never leaves the host.
var ErrNotLoopback = errors.New("transport: udp addresses must be loopback")

// UDP carries one 64-byte report per datagram: it listens on one
// loopback address and sends every report to another.
type UDP struct {
	conn  *net.UDPConn
	reply *net.UDPAddr
	log   *slog.Logger
}

func loopbackAddr(s string) (netip.AddrPort, error) {
	ap, err := netip.ParseAddrPort(s)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("transport: udp address %q: %w", s, err)
	}
	if !ap.Addr().IsLoopback() {
		return netip.AddrPort{}, fmt.Errorf("%w: %s", ErrNotLoopback, s)
	}
	return ap, nil
}

// ListenUDP listens on listen and replies to reply, both loopback
// "ip:port" addresses.
func ListenUDP(listen, reply string, log *slog.Logger) (*UDP, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	la, err := loopbackAddr(listen)
	if err != nil {
		return nil, err
	}
	ra, err := loopbackAddr(reply)
	if err != nil {
		return nil, err
	}
	conn, err := net.ListenUDP("udp", net.UDPAddrFromAddrPort(la))
	if err != nil {
		return nil, fmt.Errorf("transport: %w", err)
	}
	log.Info("listening for CTAPHID reports", "transport", "udp", "listen", conn.LocalAddr().String(), "reply", ra.String())
	return &UDP{conn: conn, reply: net.UDPAddrFromAddrPort(ra), log: log}, nil
}

// LocalAddr is the address the transport listens on.
func (u *UDP) LocalAddr() net.Addr { return u.conn.LocalAddr() }

// ReadReport returns the next datagram's report. Datagrams from
// non-loopback senders and oversized ones are dropped.
func (u *UDP) ReadReport(p []byte) (int, error) {
	buf := make([]byte, 2*ctaphid.ReportSize)
	for {
		n, from, err := u.conn.ReadFromUDPAddrPort(buf)
		if err != nil {
			return 0, fmt.Errorf("transport: udp read: %w", err)
		}
		if !from.Addr().Unmap().IsLoopback() || n > ctaphid.ReportSize {
			u.log.Debug("transport: udp datagram dropped", "from", from.String(), "len", n)
			continue
		}
		return copy(p, buf[:n]), nil
	}
}

// WriteReport sends the report to the reply address. Datagrams are
// fire-and-forget: a failed send (nobody listening) is logged and
// dropped, as a lost report would be; only a closed socket is an error.
func (u *UDP) WriteReport(p []byte) error {
	if _, err := u.conn.WriteToUDP(p, u.reply); err != nil {
		if errors.Is(err, net.ErrClosed) {
			return fmt.Errorf("transport: udp write: %w", err)
		}
		u.log.Debug("transport: udp send failed", "err", err)
	}
	return nil
}

// Close closes the socket, unblocking ReadReport.
func (u *UDP) Close() error { return u.conn.Close() }
