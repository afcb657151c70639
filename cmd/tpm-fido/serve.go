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
	"github.com/tpm-fido/tpm-fido/tpmstore"
	"github.com/tpm-fido/tpm-fido/transport"
)

// serveConfig is everything `tpm-fido serve` is told on its command line.
type serveConfig struct {
	Transport        string        // uhid, unix:PATH, udp, udp:LISTEN,REPLY
	TPM              string        // /dev/tpmrm0, swtpm:PATH, simulator
	StateDir         string        // credential database, sealed keys
	Presence         string        // user-presence backend (auto, pinentry, ...)
	Pinentry         string        // pinentry program; "" = $PINENTRY_PROGRAM, then the usual names
	PromptTimeout    time.Duration // how long a presence prompt waits
	InsecureTestMode bool          // allow a fixed presence answer etc. (tests only)
	MaxResidents     int           // resident credential capacity
	LogLevel         slog.Level
	// TestTransport is true when Transport is a socket, not the kernel device.
	TestTransport bool
}

// parseServeFlags parses serve's flags. The error has already been
// printed by the flag package when it is flag.ErrHelp or a parse error.
func parseServeFlags(args []string, stderr io.Writer) (serveConfig, error) {
	var cfg serveConfig
	fl := flag.NewFlagSet("serve", flag.ContinueOnError)
	fl.SetOutput(stderr)
	fl.Usage = func() {
		fmt.Fprintln(stderr, "usage: tpm-fido serve [flags]\n\nRun the authenticator daemon.\n\nflags:")
		fl.PrintDefaults()
	}
	fl.StringVar(&cfg.Transport, "transport", "uhid", "where to serve CTAPHID: uhid, unix:PATH (SOCK_SEQPACKET, in a directory only you can enter) or, with --insecure-test-mode, udp or udp:LISTEN,REPLY (loopback only)")
	fl.StringVar(&cfg.TPM, "tpm", "/dev/tpmrm0", "TPM: a device path, swtpm:SOCKET or simulator")
	fl.StringVar(&cfg.StateDir, "state-dir", manageStateDir(), "state directory")
	fl.StringVar(&cfg.Presence, "presence", "auto", "user-presence prompt backend: auto, notification, pinentry, terminal; with --insecure-test-mode also always-allow, always-deny or allow-after:DURATION (approve after a delay, e.g. allow-after:1.5s)")
	fl.StringVar(&cfg.Pinentry, "pinentry", "", "pinentry program for --presence pinentry (default $PINENTRY_PROGRAM, then the usual names)")
	fl.DurationVar(&cfg.PromptTimeout, "prompt-timeout", 30*time.Second, "how long a presence prompt waits for the user")
	fl.BoolVar(&cfg.InsecureTestMode, "insecure-test-mode", false, "allow test-only behaviour such as a fixed presence answer; never use it for real keys")
	fl.IntVar(&cfg.MaxResidents, "max-residents", tpmstore.DefaultMaxResidents, "how many resident credentials (passkeys) the key store holds")
	level := fl.String("log-level", "info", "log level: debug, info, warn or error")
	if err := fl.Parse(args); err != nil {
		return cfg, err
	}
	if fl.NArg() > 0 {
		return cfg, fmt.Errorf("unexpected arguments: %s", strings.Join(fl.Args(), " "))
	}
	if err := cfg.LogLevel.UnmarshalText([]byte(*level)); err != nil {
		return cfg, fmt.Errorf("--log-level %q: want debug, info, warn or error", *level)
	}
	if cfg.PromptTimeout <= 0 {
		return cfg, fmt.Errorf("--prompt-timeout must be positive")
	}
	if cfg.MaxResidents < 1 || cfg.MaxResidents > math.MaxInt32 {
		return cfg, fmt.Errorf("--max-residents must be between 1 and %d", math.MaxInt32)
	}
	if cfg.StateDir == "" {
		return cfg, fmt.Errorf("no --state-dir and no home directory to derive it from")
	}
	cfg.TestTransport = transport.IsTest(cfg.Transport)
	return cfg, nil
}

// runServe runs the daemon until SIGINT or SIGTERM.
func runServe(args []string, stdout, stderr io.Writer) int {
	cfg, err := parseServeFlags(args, stderr)
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "tpm-fido serve: %v\n", err)
		return 2
	}
	log := slog.New(slog.NewTextHandler(stderr, &slog.HandlerOptions{Level: cfg.LogLevel}))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := serve(ctx, cfg, log); err != nil {
		fmt.Fprintf(stderr, "tpm-fido: %v\n", err)
		return 1
	}
	return 0
}

// serve opens the handler and the transport, tells systemd it is ready
// and serves until ctx is done.
func serve(ctx context.Context, cfg serveConfig, log *slog.Logger) error {
	if err := cfg.checkTestModes(); err != nil {
		return err
	}
	// The transport first: a bad --transport is reported before the TPM
	// is touched, and the device exists before systemd hears READY.
	dev, err := transport.Open(cfg.Transport, log)
	if err != nil {
		return err
	}
	h, closeHandler, err := newHandler(ctx, cfg, log)
	if err != nil {
		dev.Close()
		return err
	}
	defer func() {
		if err := closeHandler(); err != nil {
			log.Error("closing the authenticator", "err", err)
		}
	}()
	srv := ctaphid.NewServer(dev, h, ctaphid.Config{
		Logger:  log,
		Version: [3]byte{0, 1, 0},
		Wink:    func() { log.Info("wink") },
	})
	if err := sdNotify("READY=1"); err != nil {
		log.Warn("telling systemd we are ready", "err", err)
	}
	log.Info("tpm-fido serving", "transport", cfg.Transport)
	err = srv.Serve(ctx) // closes dev (UHID_DESTROY for uhid)
	log.Info("tpm-fido stopped")
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
