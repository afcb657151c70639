package presence

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"time"
)

// DefaultTimeout is how long a prompt waits for an answer.
const DefaultTimeout = 30 * time.Second

// Backend names accepted by New (the --presence flag).
const (
	BackendAuto         = "auto"
	BackendNotification = "notification"
	BackendPinentry     = "pinentry"
	BackendTerminal     = "terminal"
	BackendAlwaysAllow  = "always-allow"
	BackendAlwaysDeny   = "always-deny"
	// BackendAllowAfter is a prefix: "allow-after:1.5s" approves every
	// prompt after that delay (a time.ParseDuration string, more than
	// zero and at most the prompt timeout).
	BackendAllowAfter = "allow-after:"
)

// ErrInsecure is returned by New for always-allow, always-deny and
// allow-after:D without Options.InsecureTestMode.
var ErrInsecure = errors.New("presence: fixed answers need --insecure-test-mode")

// ErrUnknownBackend is returned by New for a name it does not know.
var ErrUnknownBackend = errors.New("presence: unknown backend")

// Options configure New. The zero value is usable.
type Options struct {
	Timeout          time.Duration // per prompt; 0 = DefaultTimeout
	InsecureTestMode bool          // allows always-allow/always-deny
	Logger           *slog.Logger  // nil = discard

	PinentryProgram string // --pinentry; "" = $PINENTRY_PROGRAM, then the usual names
	BusAddress      string // D-Bus address; "" = the session bus

	// TTY is the terminal to ask on; nil opens TTYPath.
	TTY     io.ReadWriter
	TTYPath string // "" = /dev/tty

	// Seams for tests; nil means the real thing.
	Getenv   func(string) string
	LookPath func(string) (string, error)
}

func (o *Options) defaults() {
	if o.Timeout <= 0 {
		o.Timeout = DefaultTimeout
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.DiscardHandler)
	}
	if o.TTYPath == "" {
		o.TTYPath = "/dev/tty"
	}
	if o.Getenv == nil {
		o.Getenv = os.Getenv
	}
	if o.LookPath == nil {
		o.LookPath = exec.LookPath
	}
}

// Detect returns the backend name "auto" resolves to: notification when
// the session bus has a notification server, else pinentry when a
// pinentry program is found, else terminal when a terminal can be opened.
// It returns ErrUnavailable, with the reasons, when none fits.
func Detect(opts Options) (string, error) {
	opts.defaults()
	errNotify := NotificationServerAvailable(opts.BusAddress)
	if errNotify == nil {
		return BackendNotification, nil
	}
	_, errPin := FindPinentry(opts.PinentryProgram, opts.Getenv("PINENTRY_PROGRAM"), opts.LookPath)
	if errPin == nil {
		return BackendPinentry, nil
	}
	errTTY := ttyAvailable(opts)
	if errTTY == nil {
		return BackendTerminal, nil
	}
	return "", fmt.Errorf("%w: notification: %v; pinentry: %v; terminal: %v", ErrUnavailable, errNotify, errPin, errTTY)
}

func ttyAvailable(opts Options) error {
	if opts.TTY != nil {
		return nil
	}
	f, err := os.OpenFile(opts.TTYPath, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}

// New returns the Prompter for a --presence name, wrapped in a Coalescer
// (one prompt at a time, one prompt per retried request). The fixed
// answers are refused with ErrInsecure unless opts.InsecureTestMode, and
// log a warning when accepted. An unusable backend gives ErrUnavailable.
func New(name string, opts Options) (Prompter, error) {
	opts.defaults()
	if name == "" || name == BackendAuto {
		picked, err := Detect(opts)
		if err != nil {
			return nil, err
		}
		opts.Logger.Info("presence backend chosen", "backend", picked)
		name = picked
	}
	var p Prompter
	switch name {
	case BackendNotification, "notify", "dbus":
		if err := NotificationServerAvailable(opts.BusAddress); err != nil {
			return nil, err
		}
		p = NewNotification(opts.BusAddress, opts.Timeout, opts.Logger)
	case BackendPinentry:
		prog, err := FindPinentry(opts.PinentryProgram, opts.Getenv("PINENTRY_PROGRAM"), opts.LookPath)
		if err != nil {
			return nil, err
		}
		p = NewPinentry(prog, opts.Timeout, opts.Logger)
	case BackendTerminal, "tty":
		rw := opts.TTY
		if rw == nil {
			f, err := os.OpenFile(opts.TTYPath, os.O_RDWR, 0)
			if err != nil {
				return nil, fmt.Errorf("%w: terminal: %w", ErrUnavailable, err)
			}
			rw = f
		}
		p = NewTerminal(rw, opts.Timeout)
	case BackendAlwaysAllow, BackendAlwaysDeny:
		if !opts.InsecureTestMode {
			return nil, fmt.Errorf("%w (asked for %s)", ErrInsecure, name)
		}
		opts.Logger.Warn("INSECURE: user presence is not checked; every request is answered without asking", "presence", name)
		p = Fixed{Allow: name == BackendAlwaysAllow}
	default:
		d, ok, err := parseAllowAfter(name, opts.Timeout)
		if !ok {
			return nil, fmt.Errorf("%w %q (want auto, notification, pinentry, terminal, always-allow, always-deny or allow-after:DURATION)", ErrUnknownBackend, name)
		}
		if err != nil {
			return nil, err
		}
		if !opts.InsecureTestMode {
			return nil, fmt.Errorf("%w (asked for %s)", ErrInsecure, name)
		}
		opts.Logger.Warn("INSECURE: user presence is not checked; every request is approved after a fixed delay", "presence", name, "delay", d)
		p = Fixed{Allow: true, Delay: d}
	}
	return NewCoalescer(p, 0, nil), nil
}

// parseAllowAfter parses "allow-after:D". ok is false when name is not of
// that form; err says what is wrong with D.
func parseAllowAfter(name string, timeout time.Duration) (d time.Duration, ok bool, err error) {
	v, ok := strings.CutPrefix(name, BackendAllowAfter)
	if !ok {
		return 0, false, nil
	}
	d, err = time.ParseDuration(v)
	if err != nil {
		return 0, true, fmt.Errorf("presence: %s: %w", name, err)
	}
	if d <= 0 || d > timeout {
		return 0, true, fmt.Errorf("presence: %s: the delay must be more than 0 and at most the prompt timeout (%v)", name, timeout)
	}
	return d, true, nil
}
