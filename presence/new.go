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

// Choice is the backend New builds for a --presence name, as Choose found
// it.
type Choice struct {
	Backend string        // notification, pinentry, terminal, always-allow, always-deny or allow-after:D
	Program string        // pinentry: the program's path
	Delay   time.Duration // allow-after:D: D
	Detail  string        // for people: what was found, e.g. the pinentry's flavor
	// Terminal: the prompt appears on a terminal (the terminal backend, or
	// a curses pinentry), which a daemon started by systemd does not have.
	Terminal bool
	// Fixed: a test answer (always-allow, always-deny, allow-after:D); no
	// one is asked.
	Fixed bool
}

// Choose resolves a --presence name to the backend New builds and checks,
// the way that backend will prompt, that it can: "auto" is the first of
// notification (the session bus has a notification server), pinentry (a
// program is found and can draw: see ProbePinentry) and terminal (one
// can be opened). It returns ErrUnavailable, with every reason, when the
// named backend (or, for auto, none) can prompt; ErrInsecure and
// ErrUnknownBackend as New does.
func Choose(name string, opts Options) (Choice, error) {
	opts.defaults()
	switch name {
	case "", BackendAuto:
		c, errNotify := Choose(BackendNotification, opts)
		if errNotify == nil {
			return c, nil
		}
		c, errPin := Choose(BackendPinentry, opts)
		if errPin == nil {
			return c, nil
		}
		c, errTTY := Choose(BackendTerminal, opts)
		if errTTY == nil {
			return c, nil
		}
		return Choice{}, fmt.Errorf("%w: %s; %s; %s", ErrUnavailable, reason(errNotify), reason(errPin), reason(errTTY))
	case BackendNotification, "notify", "dbus":
		if err := NotificationServerAvailable(opts.BusAddress); err != nil {
			return Choice{}, unavailable("notification", err)
		}
		return Choice{Backend: BackendNotification, Detail: "a notification server on the session bus"}, nil
	case BackendPinentry:
		prog, err := FindPinentry(opts.PinentryProgram, opts.Getenv("PINENTRY_PROGRAM"), opts.LookPath)
		if err != nil {
			return Choice{}, unavailable("pinentry", err)
		}
		tty := opts.Getenv("GPG_TTY")
		flavor, err := ProbePinentry(prog, tty, opts.Getenv("TERM"))
		if err != nil {
			return Choice{}, unavailable("pinentry", err)
		}
		c := Choice{Backend: BackendPinentry, Program: prog, Detail: prog, Terminal: DrawsOnTerminal(flavor)}
		if flavor != "" {
			c.Detail += ", flavor " + flavor
		}
		if c.Terminal {
			c.Detail += " on " + tty
		}
		return c, nil
	case BackendTerminal, "tty":
		if err := ttyAvailable(opts); err != nil {
			return Choice{}, unavailable("terminal", err)
		}
		return Choice{Backend: BackendTerminal, Detail: opts.TTYPath, Terminal: true}, nil
	case BackendAlwaysAllow, BackendAlwaysDeny:
		if !opts.InsecureTestMode {
			return Choice{}, fmt.Errorf("%w (asked for %s)", ErrInsecure, name)
		}
		return Choice{Backend: name, Detail: "a fixed answer, for tests", Fixed: true}, nil
	}
	d, ok, err := parseAllowAfter(name, opts.Timeout)
	switch {
	case !ok:
		return Choice{}, fmt.Errorf("%w %q (want auto, notification, pinentry, terminal, always-allow, always-deny or allow-after:DURATION)", ErrUnknownBackend, name)
	case err != nil:
		return Choice{}, err
	case !opts.InsecureTestMode:
		return Choice{}, fmt.Errorf("%w (asked for %s)", ErrInsecure, name)
	}
	return Choice{Backend: name, Detail: "approves after " + d.String() + ", for tests", Delay: d, Fixed: true}, nil
}

// unavailable is ErrUnavailable for backend, with err's reason.
func unavailable(backend string, err error) error {
	return fmt.Errorf("%w: %s: %s", ErrUnavailable, backend, reason(err))
}

// reason is err's message without ErrUnavailable's own text.
func reason(err error) string {
	return strings.TrimPrefix(err.Error(), ErrUnavailable.Error()+": ")
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
	c, err := Choose(name, opts)
	if err != nil {
		return nil, err
	}
	if name == "" || name == BackendAuto {
		opts.Logger.Info("presence backend chosen", "backend", c.Backend, "detail", c.Detail)
	}
	var p Prompter
	switch c.Backend {
	case BackendNotification:
		p = NewNotification(opts.BusAddress, opts.Timeout, opts.Logger)
	case BackendPinentry:
		p = NewPinentry(c.Program, opts.Timeout, opts.Logger)
	case BackendTerminal:
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
		opts.Logger.Warn("INSECURE: user presence is not checked; every request is answered without asking", "presence", c.Backend)
		p = Fixed{Allow: c.Backend == BackendAlwaysAllow}
	default: // allow-after:D
		opts.Logger.Warn("INSECURE: user presence is not checked; every request is approved after a fixed delay", "presence", c.Backend, "delay", c.Delay)
		p = Fixed{Allow: true, Delay: c.Delay}
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
