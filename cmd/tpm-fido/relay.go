package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/tpm-fido/tpm-fido/relay"
	"github.com/tpm-fido/tpm-fido/uhid"
)

// stringList is a repeatable flag.
type stringList []string

func (l *stringList) String() string     { return strings.Join(*l, ",") }
func (l *stringList) Set(v string) error { *l = append(*l, v); return nil }

// runRelay runs the relay system service: it alone opens /dev/uhid, and
// creates the FIDO device for the daemon of an allowed user.
func runRelay(args []string, stdout, stderr io.Writer) int {
	fl := newFlagSet("relay", "relay [FLAGS]",
		"The system service that holds /dev/uhid: it creates the FIDO device for\n"+
			"the tpm-fido daemon of an allowed user, so that users need no right on\n"+
			"/dev/uhid (which would let them create a keyboard). Installed by\n"+
			"`sudo tpm-fido setup` as tpm-fido-relay.service, run as the system user\n"+
			"tpm-fido-relay.")
	socket := fl.String("socket", relay.DefaultSocket, "`PATH` of the socket the users' daemons connect to")
	users := fl.String("users-file", relay.DefaultUsersFile, "`FILE` naming the users whose daemons are served, one uid (or user name, from /etc/passwd only) per line (read at every connection)")
	var allow stringList
	fl.Var(&allow, "allow-user", "also serve this `USER` (a name or uid; repeatable)")
	level := fl.String("log-level", "info", "log `LEVEL`: debug, info, warn or error")
	if code, ok := fl.parse(args, 0, 0, stdout, stderr); !ok {
		return code
	}
	var lv slog.Level
	if err := lv.UnmarshalText([]byte(*level)); err != nil {
		return fl.usageError(stderr, "--log-level %q: want debug, info, warn or error", *level)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: lv}))
	srv, err := relay.Listen(relay.Config{
		Socket:    *socket,
		UsersFile: *users,
		Allow:     allow,
		Logger:    log,
		OpenDevice: func() (relay.Device, error) {
			return uhid.Open(uhid.Identity{}, log)
		},
	})
	if err != nil {
		fmt.Fprintf(stderr, "tpm-fido relay: %v\n", err)
		return exitFail
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := sdNotify("READY=1"); err != nil {
		log.Warn("telling systemd we are ready", "err", err)
	}
	if err := srv.Serve(ctx); err != nil {
		fmt.Fprintf(stderr, "tpm-fido relay: %v\n", err)
		return exitFail
	}
	return exitOK
}
