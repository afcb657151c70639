// Package transport opens the report device the daemon serves CTAPHID
// on: the uhid kernel device, a Unix SOCK_SEQPACKET socket, or loopback
// UDP datagrams, all behind ctaphid.ReportDevice.
package transport

import (
	"errors"
	"fmt"
	"log/slog"
	"strings"

	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
	"github.com/tpm-fido/tpm-fido/uhid"
)

// ErrBadSpec is returned by Open for a transport spec it does not know.
var ErrBadSpec = errors.New("transport: unknown transport (want uhid, unix:PATH, udp or udp:LISTEN,REPLY)")

// Default UDP addresses: the CTAPHID-over-UDP simulation convention.
const (
	DefaultUDPListen = "127.0.0.1:8111"
	DefaultUDPReply  = "127.0.0.1:7112"
)

// Open opens the transport spec names:
//
//	uhid                 the kernel's /dev/uhid (a real HID device)
//	unix:PATH            a SOCK_SEQPACKET socket at PATH (see ListenUnix)
//	udp                  datagrams on 127.0.0.1:8111, replies to 127.0.0.1:7112
//	udp:LISTEN,REPLY     the same with other loopback addresses
//
// UDP cannot authenticate its peer: callers must reserve it for tests.
//
// IsTest reports whether the transport is a test transport (not uhid).
func Open(spec string, log *slog.Logger) (ctaphid.ReportDevice, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	switch {
	case spec == "uhid":
		d, err := uhid.Open(uhid.Identity{}, log)
		if err != nil {
			return nil, err
		}
		return d, nil
	case strings.HasPrefix(spec, "unix:"):
		path := strings.TrimPrefix(spec, "unix:")
		if path == "" {
			return nil, fmt.Errorf("%w: %q has no path", ErrBadSpec, spec)
		}
		return ListenUnix(path, log)
	case spec == "udp":
		return ListenUDP(DefaultUDPListen, DefaultUDPReply, log)
	case strings.HasPrefix(spec, "udp:"):
		listen, reply, ok := strings.Cut(strings.TrimPrefix(spec, "udp:"), ",")
		if !ok {
			reply = DefaultUDPReply
		}
		return ListenUDP(listen, reply, log)
	}
	return nil, fmt.Errorf("%w: %q", ErrBadSpec, spec)
}

// IsTest reports whether spec names a socket transport rather than the
// kernel device. The daemon only allows a fixed presence answer on those.
func IsTest(spec string) bool {
	return spec != "uhid"
}
