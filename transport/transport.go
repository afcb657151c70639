// Package transport opens the report device the daemon serves CTAPHID
// on: the uhid kernel device, a Unix SOCK_SEQPACKET socket, or loopback
// UDP datagrams, all behind ctaphid.ReportDevice.
package transport

import (
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"

	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
	"github.com/tpm-fido/tpm-fido/relay"
	"github.com/tpm-fido/tpm-fido/uhid"
)

// ErrBadSpec is returned by Open for a transport spec it does not know.
var ErrBadSpec = errors.New("transport: unknown transport (want relay, relay:SOCKET, uhid, unix:PATH, udp or udp:LISTEN,REPLY)")

// Default UDP addresses: the CTAPHID-over-UDP simulation convention.
const (
	DefaultUDPListen = "127.0.0.1:8111"
	DefaultUDPReply  = "127.0.0.1:7112"
)

// Open opens the transport spec names:
//
//	relay                the FIDO device of the tpm-fido relay service at
//	                     relay.DefaultSocket (a real HID device; the user
//	                     needs no right on /dev/uhid)
//	relay:SOCKET         the same through another relay socket
//	uhid                 the kernel's /dev/uhid (a real HID device; needs
//	                     write access to /dev/uhid, which the relay has)
//	unix:PATH            a SOCK_SEQPACKET socket at PATH (see ListenUnix)
//	udp                  datagrams on 127.0.0.1:8111, replies to 127.0.0.1:7112
//	udp:LISTEN,REPLY     the same with other loopback addresses
//
// UDP cannot authenticate its peer: callers must reserve it for tests.
func Open(spec string, log *slog.Logger) (ctaphid.ReportDevice, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	sp, err := parseSpec(spec)
	if err != nil {
		return nil, err
	}
	switch sp.kind {
	case "relay":
		c, err := relay.Dial(sp.path)
		if err != nil {
			return nil, err
		}
		log.Info("the relay created the device", "transport", "relay", "socket", sp.path)
		return c, nil
	case "uhid":
		d, err := uhid.Open(uhid.Identity{}, log)
		if err != nil {
			return nil, err
		}
		return d, nil
	case "unix":
		return ListenUnix(sp.path, log)
	}
	return ListenUDP(sp.listen, sp.reply, log)
}

// CheckSpec reports whether Open knows spec, from its text alone: a bad
// --transport is a usage error.
func CheckSpec(spec string) error {
	_, err := parseSpec(spec)
	return err
}

// Preflight checks, without opening or creating anything, what Open will
// check first: the spec, and for unix:PATH PATH's directory, if it
// exists, as ListenUnix will. The daemon runs it before its other
// start-up checks, which come before Open.
func Preflight(spec string) error {
	sp, err := parseSpec(spec)
	if err != nil {
		return err
	}
	if sp.kind == "unix" {
		if dir := filepath.Dir(sp.path); exists(dir) {
			return checkPrivateDir(dir)
		}
	}
	return nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

type parsedSpec struct {
	kind          string // relay, uhid, unix, udp
	path          string // relay, unix
	listen, reply string // udp
}

func parseSpec(spec string) (parsedSpec, error) {
	switch {
	case spec == "relay":
		return parsedSpec{kind: "relay", path: relay.DefaultSocket}, nil
	case strings.HasPrefix(spec, "relay:"):
		path := strings.TrimPrefix(spec, "relay:")
		if path == "" {
			return parsedSpec{}, fmt.Errorf("%w: %q has no path", ErrBadSpec, spec)
		}
		return parsedSpec{kind: "relay", path: path}, nil
	case spec == "uhid":
		return parsedSpec{kind: "uhid"}, nil
	case strings.HasPrefix(spec, "unix:"):
		path := strings.TrimPrefix(spec, "unix:")
		if path == "" {
			return parsedSpec{}, fmt.Errorf("%w: %q has no path", ErrBadSpec, spec)
		}
		return parsedSpec{kind: "unix", path: path}, nil
	case spec == "udp":
		return parsedSpec{kind: "udp", listen: DefaultUDPListen, reply: DefaultUDPReply}, nil
	case strings.HasPrefix(spec, "udp:"):
		listen, reply, ok := strings.Cut(strings.TrimPrefix(spec, "udp:"), ",")
		if !ok {
			reply = DefaultUDPReply
		}
		for _, a := range []string{listen, reply} {
			if _, err := loopbackAddr(a); err != nil {
				return parsedSpec{}, err
			}
		}
		return parsedSpec{kind: "udp", listen: listen, reply: reply}, nil
	}
	return parsedSpec{}, fmt.Errorf("%w: %q", ErrBadSpec, spec)
}
