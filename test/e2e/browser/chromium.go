package browser

import (
	"context"
	"fmt"
	"regexp"
	"strings"
	"time"
)

// Chromium runs Debian's chromium, non-headless on the session's X server
// (its WebAuthn dialogs do not exist in headless mode), with its sandbox.
//
// Chromium has no automation hook into its WebAuthn dialog, so the test
// reads the dialog's state from Chromium's own FIDO device log (enabled
// with --vmodule=device_event_log_impl=1; each change of the dialog logs
// "UI step: kName") and types into the dialog with xdotool: the PIN
// field has the keyboard focus when the step appears.
type Chromium struct {
	D       *Desktop
	Profile string

	proc  *Proc
	steps chan string
}

// Name implements Browser.
func (c *Chromium) Name() string { return "chromium" }

var chromiumStep = regexp.MustCompile(`FIDO: [A-Z]+: \S+ UI step: (k\w+)`)

// ChromiumFlags keep Chromium off the network (the guest has none) and
// quiet: no first-run UI, no sync, component updates, background
// requests, crash reports or keyring; they let its child processes wait
// for the busy browser process, and turn on its FIDO log.
var ChromiumFlags = []string{
	"--no-first-run", "--no-default-browser-check", "--disable-background-networking",
	"--disable-component-update", "--disable-sync", "--disable-default-apps", "--disable-extensions",
	"--disable-breakpad", "--disable-domain-reliability", "--disable-client-side-phishing-detection",
	"--disable-features=Translate,OptimizationHints,MediaRouter,DialMediaRouteProvider,AutofillServerCommunication",
	"--password-store=basic", "--metrics-recording-only",
	// A child process gives up after 15 s without a connection from the
	// browser process, which a busy emulated guest can take at start-up
	// (then the network service restarts and the first page stays blank).
	"--ipc-connection-timeout=180",
	"--window-position=0,0", "--window-size=1200,850",
	"--enable-logging=stderr", "--v=0", "--vmodule=device_event_log_impl=1",
}

// Start implements Browser.
func (c *Chromium) Start(ctx context.Context, url string) error {
	c.steps = make(chan string, 64)
	args := append([]string{"chromium", "--user-data-dir=" + c.Profile}, ChromiumFlags...)
	args = append(args, url)
	p, err := c.D.Start("chromium", "chromium.log", c.line, nil, args...)
	if err != nil {
		return err
	}
	c.proc = p
	return nil
}

// Open implements Browser: a second chromium command hands the URL to
// the running browser, which opens it in a new tab.
func (c *Chromium) Open(ctx context.Context, url string) error {
	p, err := c.D.Start("chromium (open)", "chromium-open.log", nil, nil,
		"chromium", "--user-data-dir="+c.Profile, url)
	if err != nil {
		return err
	}
	if ok, err := p.Wait(time.Minute); !ok || err != nil {
		_ = p.Stop(time.Second)
		return fmt.Errorf("chromium did not take the URL: %v", err)
	}
	return nil
}

func (c *Chromium) line(s string) {
	if m := chromiumStep.FindStringSubmatch(s); m != nil {
		select {
		case c.steps <- m[1]:
		default:
		}
	}
}

// Stop implements Browser.
func (c *Chromium) Stop() error {
	if c.proc == nil {
		return nil
	}
	return c.proc.Stop(10 * time.Second)
}

// SetPIN implements Browser: Chromium asks for a new PIN inside the
// ceremony that needs one.
func (c *Chromium) SetPIN(ctx context.Context, pin string) error { return ErrNoPINSettings }

// Watch implements Browser.
func (c *Chromium) Watch(ctx context.Context, pin string) *UI {
	u := newUI()
	// Steps logged before this ceremony are stale.
	for len(c.steps) > 0 {
		<-c.steps
	}
	go func() {
		defer close(u.done)
		// A step that needs input is answered, and answered again when
		// the dialog has not moved on 12 s later (keys typed while the
		// sheet was still being built, under emulation, get lost; a PIN
		// typed twice that did not match leaves Chromium on the same
		// step with empty fields).
		const patience = 12 * time.Second
		var (
			pending  string
			attempt  int
			deadline <-chan time.Time
		)
		for {
			select {
			case <-ctx.Done():
				return
			case s := <-c.steps:
				u.step(s)
				pending, attempt, deadline = "", 0, nil
				if needs, err := c.act(u, s, pin, 0); err != nil {
					u.fail(err)
				} else if needs {
					pending, deadline = s, time.After(patience)
				}
			case <-deadline:
				attempt++
				if attempt == 3 {
					u.fail(fmt.Errorf("Chromium stayed on %s after %d tries to answer it", pending, attempt))
					deadline = nil
					continue
				}
				u.step(pending + " (again)")
				if _, err := c.act(u, pending, pin, attempt); err != nil {
					u.fail(err)
				}
				deadline = time.After(patience)
			}
		}
	}()
	return u
}

// act answers one dialog step and reports whether it typed anything. The
// step is logged as the dialog changes; the pause lets the new sheet take
// the keyboard focus first. Every field is selected before typing, so a
// retry replaces what an earlier try left.
func (c *Chromium) act(u *UI, step, pin string, attempt int) (bool, error) {
	settle := func() { time.Sleep(1500 * time.Millisecond) }
	switch {
	case step == "kClientPinSetup":
		settle()
		if attempt == 0 {
			u.tag(UIPinSetup)
		}
		if err := c.D.Type("", "ctrl+a"); err != nil {
			return true, err
		}
		if err := c.D.Type(pin, "Tab", "ctrl+a"); err != nil {
			return true, err
		}
		return true, c.D.Type(pin, "Return")
	case step == "kClientPinEntry":
		settle()
		if attempt == 0 {
			u.tag(UIPinEntry)
		}
		if err := c.D.Type("", "ctrl+a"); err != nil {
			return true, err
		}
		return true, c.D.Type(pin, "Return")
	case strings.HasPrefix(step, "kSelectAccount"), step == "kSelectPriorityMechanism":
		settle()
		if attempt == 0 {
			u.tag(UIAccount)
		}
		return true, c.D.Type("", "Return")
	case strings.HasPrefix(step, "kError"), strings.HasPrefix(step, "kClientPinError"),
		step == "kKeyNotRegistered", step == "kKeyAlreadyRegistered", step == "kTimedOut":
		// An error sheet ("Something went wrong", with Cancel and Try
		// again) holds the page's promise until the user closes it:
		// Escape is Cancel, and the page gets NotAllowedError.
		settle()
		if attempt == 0 {
			u.tag(UIErrorShown)
		}
		return true, c.D.Type("", "Escape")
	case step == "kUsbInsertAndActivate", step == "kClientPinTapAgain":
		if !u.Has(UIPresenceShown) {
			u.tag(UIPresenceShown)
		}
	}
	return false, nil
}
