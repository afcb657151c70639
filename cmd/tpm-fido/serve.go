package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
	"github.com/tpm-fido/tpm-fido/presence"
	"github.com/tpm-fido/tpm-fido/tpmstore"
	"github.com/tpm-fido/tpm-fido/transport"
)

// serveConfig is everything `tpm-fido serve` is told on its command line.
type serveConfig struct {
	Transport        string        // relay, relay:SOCKET, uhid, unix:PATH, udp, udp:LISTEN,REPLY
	TPM              string        // /dev/tpmrm0, swtpm:PATH, simulator
	StateDir         string        // credential database, sealed keys
	Presence         string        // user-presence backend (auto, pinentry, ...)
	Pinentry         string        // pinentry program; "" = $PINENTRY_PROGRAM, then the usual names
	PromptTimeout    time.Duration // how long a presence prompt waits
	InsecureTestMode bool          // allow a fixed presence answer etc. (tests only)
	MaxResidents     int           // resident credential capacity
	LogLevel         slog.Level
}

// presenceChoices are the --presence values for real use; the fixed test
// answers are left out of the help on purpose.
var presenceChoices = []string{presence.BackendAuto, presence.BackendNotification, presence.BackendPinentry, presence.BackendTerminal}

// parseServeFlags parses serve's command line. Every error it returns is
// a usage error; flag.ErrHelp means -h. The flag set is returned for the
// help text.
func parseServeFlags(args []string) (serveConfig, *flagSet, error) {
	var cfg serveConfig
	fl := newFlagSet("serve", "serve [FLAGS]", "Run the authenticator daemon (what tpm-fido does with no command).")
	fl.StringVar(&cfg.Transport, "transport", "relay", "where to serve CTAPHID, a `SPEC`: relay (the tpm-fido-relay service creates the key's device; you need no right on /dev/uhid), relay:SOCKET, uhid (/dev/uhid directly), unix:PATH (SOCK_SEQPACKET, in a directory only you can enter) or, with --insecure-test-mode, udp or udp:LISTEN,REPLY (loopback only)")
	fl.StringVar(&cfg.TPM, "tpm", "/dev/tpmrm0", "the TPM, a `SPEC`: a device path, swtpm:SOCKET or simulator")
	fl.StringVar(&cfg.StateDir, "state-dir", manageStateDir(), "`DIR` for the state (credentials, PIN, counter)")
	fl.StringVar(&cfg.Presence, "presence", presence.BackendAuto, "how to ask the user to approve, a `NAME`: "+choiceList(presenceChoices)+"; with --insecure-test-mode also always-allow, always-deny or allow-after:DURATION (approve after a delay, e.g. allow-after:1.5s)")
	fl.StringVar(&cfg.Pinentry, "pinentry", "", "pinentry `PROGRAM` for the pinentry prompt (default $PINENTRY_PROGRAM, then the usual names)")
	fl.durationVar(&cfg.PromptTimeout, "prompt-timeout", 30*time.Second, "how long a prompt waits for the user, a `DURATION` such as 30s or 2m")
	fl.BoolVar(&cfg.InsecureTestMode, "insecure-test-mode", false, "allow test-only behaviour such as a fixed presence answer; never use it for real keys")
	fl.IntVar(&cfg.MaxResidents, "max-residents", tpmstore.DefaultMaxResidents, "how many resident credentials (passkeys) the key store holds, a number `N`")
	level := fl.String("log-level", "info", "log `LEVEL`: debug, info, warn or error")
	if err := fl.Parse(args); err != nil {
		return cfg, fl, err
	}
	if fl.NArg() > 0 {
		return cfg, fl, fmt.Errorf("unexpected argument: %s", strings.Join(fl.Args(), " "))
	}
	if err := cfg.LogLevel.UnmarshalText([]byte(*level)); err != nil {
		return cfg, fl, fmt.Errorf("--log-level %q: want debug, info, warn or error", *level)
	}
	if cfg.PromptTimeout <= 0 {
		return cfg, fl, fmt.Errorf("--prompt-timeout must be positive")
	}
	if err := transport.CheckSpec(cfg.Transport); err != nil {
		return cfg, fl, fmt.Errorf("--transport: %w", err)
	}
	if cfg.MaxResidents < 1 || cfg.MaxResidents > math.MaxInt32 {
		return cfg, fl, fmt.Errorf("--max-residents must be between 1 and %d", math.MaxInt32)
	}
	if cfg.StateDir == "" {
		return cfg, fl, fmt.Errorf("no --state-dir and no home directory to derive it from")
	}
	return cfg, fl, nil
}

// choiceList is "a, b, c or d".
func choiceList(c []string) string {
	if len(c) < 2 {
		return strings.Join(c, "")
	}
	return strings.Join(c[:len(c)-1], ", ") + " or " + c[len(c)-1]
}

// runServe runs the daemon until SIGINT or SIGTERM.
func runServe(args []string, stdout, stderr io.Writer) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runServeContext(ctx, args, stdout, stderr)
}

// runServeContext is runServe until ctx is done.
func runServeContext(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	cfg, fl, err := parseServeFlags(args)
	if errors.Is(err, flag.ErrHelp) {
		fl.printUsage(stdout)
		return exitOK
	}
	if err != nil {
		return fl.usageError(stderr, "%v", err)
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	err = serve(ctx, cfg, log)
	switch {
	case errors.Is(err, presence.ErrUnknownBackend):
		return fl.usageError(stderr, "--presence %q: want %s", cfg.Presence, choiceList(presenceChoices))
	case err != nil:
		fmt.Fprintf(stderr, "tpm-fido: %v\n", err)
		return exitFail
	}
	return exitOK
}

// serve opens the handler and the transport, tells systemd it is ready
// and serves until ctx is done.
func serve(ctx context.Context, cfg serveConfig, log *slog.Logger) error {
	if err := cfg.checkTestModes(); err != nil {
		return err
	}
	if err := transport.Preflight(cfg.Transport); err != nil {
		return err
	}
	// Every start-up check (the prompt, the TPM, the state as far as Open
	// reads it) before the transport opens: only a daemon that can answer
	// creates the device or says it listens, and the device exists before
	// systemd hears READY. The walk over the rest of the state ends a few
	// milliseconds later (below).
	h, closeHandler, checked, err := newHandler(cfg, log)
	if err != nil {
		return err
	}
	defer func() {
		if err := closeHandler(); err != nil {
			log.Error("closing the authenticator", "err", err)
		}
	}()
	dev, err := transport.Open(cfg.Transport, log)
	if err != nil {
		return err
	}
	srv := ctaphid.NewServer(dev, h, ctaphid.Config{
		Logger:  log,
		Version: [3]byte{0, 1, 0},
		Wink:    func() { log.Info("wink") },
	})
	if err := sdNotify("READY=1"); err != nil {
		log.Warn("telling systemd we are ready", "err", err)
	}
	log.Info("tpm-fido serving", "transport", cfg.Transport)
	// The state's full check ends a few milliseconds after the start; a
	// damaged state stops the daemon as it would have stopped its start.
	ctx, stop := context.WithCancel(ctx)
	defer stop()
	watched := make(chan struct{})
	go func() {
		defer close(watched)
		if checked() != nil {
			log.Error("the state is damaged; stopping")
			stop()
		}
	}()
	err = srv.Serve(ctx) // closes dev (UHID_DESTROY for uhid)
	<-watched
	log.Info("tpm-fido stopped")
	if cerr := checked(); cerr != nil {
		return cerr
	}
	return err
}

// sdNotify sends state to the service manager when $NOTIFY_SOCKET names
// one (sd_notify(3)); it does nothing otherwise.
func sdNotify(state string) error {
	path := os.Getenv("NOTIFY_SOCKET")
	if path == "" {
		return nil
	}
	if path[0] == '@' {
		path = "\x00" + path[1:] // abstract socket
	} else if path[0] != '/' {
		return fmt.Errorf("NOTIFY_SOCKET %q is not a unix socket path", path)
	}
	c, err := net.DialUnix("unixgram", nil, &net.UnixAddr{Name: path, Net: "unixgram"})
	if err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("sd_notify: %w", err)
	}
	return nil
}
