package browser

import (
	"context"
	"crypto/rand"
	_ "embed"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/go-webauthn/webauthn/webauthn"

	"github.com/tpm-fido/tpm-fido/presence/presencetest"
)

// Config is what the host hands the guest driver (as JSON in the work
// directory).
type Config struct {
	Daemon   string   `json:"daemon"`   // the tpm-fido binary
	Browsers []string `json:"browsers"` // "chromium", "firefox"
	Fault    string   `json:"fault"`    // "", FaultDeny or FaultNoHidraw
	OutDir   string   `json:"outDir"`   // logs and screenshots
	PIN      string   `json:"pin"`
	Port     int      `json:"port"`
}

// Flows are the flows run for each browser, by the suffix of their
// result name (BROWSER-SUFFIX).
var Flows = []string{"a-non-discoverable", "b-passkey-pin", "c-deny"}

// Programs are the guest programs each browser needs.
var Programs = map[string][]string{
	"chromium": {"chromium"},
	"firefox":  {"firefox-esr"},
}

// HostPrograms are the programs the guest takes from the host's root,
// besides the browsers and the VM's own (vm.HostPrograms), with the
// Debian package of each (all in scripts/packages.txt).
var HostPrograms = []struct{ Name, Package string }{
	{"chromium", "chromium"}, {"firefox-esr", "firefox-esr"},
	{"Xvfb", "xvfb"}, {"xdotool", "xdotool"}, {"dbus-daemon", "dbus-daemon"},
	{"udevadm", "udev"}, {"/lib/systemd/systemd-udevd", "udev"},
	{"setpriv", "util-linux"}, {"useradd", "passwd"}, {"groupadd", "passwd"},
}

// Reporter prints the result markers the host reads from the console:
// E2E-RESULT NAME PASS|FAIL|SKIP DETAIL, then E2E-LOG NAME: LINE for each
// line of what was checked.
type Reporter struct {
	W  io.Writer
	mu sync.Mutex
}

// Result prints one flow's result and its lines.
func (r *Reporter) Result(name, status, detail string, lines []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	fmt.Fprintf(r.W, "E2E-RESULT %s %s %s\n", name, status, oneLine(detail))
	for _, l := range lines {
		fmt.Fprintf(r.W, "E2E-LOG %s: %s\n", name, oneLine(l))
	}
}

func oneLine(s string) string { return strings.Join(strings.Fields(s), " ") }

// flow collects what one flow checked.
type flow struct {
	name  string
	lines []string
	start time.Time
}

func (f *flow) logf(format string, args ...any) {
	f.lines = append(f.lines, fmt.Sprintf(format, args...))
}

// session is one browser against one fresh daemon.
type session struct {
	cfg    Config
	d      *Desktop
	rp     *RP
	b      Browser
	daemon *Daemon
	rep    *Reporter
	logf   func(string, ...any)
}

// Run runs every flow for each configured browser and reports them.
func Run(ctx context.Context, cfg Config, home, runtime string, rep *Reporter, logf func(string, ...any)) {
	all := func(status, why string) {
		for _, b := range cfg.Browsers {
			for _, fl := range Flows {
				rep.Result(b+"-"+fl, status, why, nil)
			}
		}
	}
	d, err := StartDesktop(ctx, home, runtime, cfg.OutDir, logf)
	if err != nil {
		all("FAIL", "the guest desktop did not start: "+err.Error())
		return
	}
	defer d.Close()
	rp, err := NewRP(ctx, cfg.Port, logf)
	if err != nil {
		all("FAIL", "the relying party did not start: "+err.Error())
		return
	}
	for _, name := range cfg.Browsers {
		s := &session{cfg: cfg, d: d, rp: rp, rep: rep, logf: logf}
		s.run(ctx, name, home)
	}
}

func (s *session) run(ctx context.Context, name, home string) {
	report := func(status, why string) {
		for _, fl := range Flows {
			s.rep.Result(name+"-"+fl, status, why, nil)
		}
	}
	for _, p := range Programs[name] {
		if _, err := exec.LookPath(p); err != nil {
			report("SKIP", fmt.Sprintf("%s is not installed (%v)", p, err))
			return
		}
	}
	switch name {
	case "chromium":
		s.b = &Chromium{D: s.d, Profile: filepath.Join(home, "chromium")}
	case "firefox":
		s.b = &Firefox{D: s.d, Profile: filepath.Join(home, "firefox"), Logf: s.logf}
	default:
		report("FAIL", "unknown browser "+name)
		return
	}
	start := time.Now()
	dm, err := StartDaemon(ctx, s.d, s.cfg.Daemon, filepath.Join(home, "state-"+name), "daemon-"+name+".log", s.cfg.Fault)
	if err != nil {
		report("FAIL", "tpm-fido: "+err.Error())
		return
	}
	s.daemon = dm
	s.logf("%s: daemon up on %s in %s", name, dm.Hidraw, time.Since(start).Round(time.Millisecond))
	defer func() {
		if err := dm.Stop(15 * time.Second); err != nil {
			s.logf("%s: stopping the daemon: %v", name, err)
		}
	}()

	start = time.Now()
	bctx, cancel := context.WithTimeout(ctx, 6*time.Minute)
	err = s.b.Start(bctx, s.rp.PageURL())
	var ua string
	if err == nil {
		// Under heavy emulation a browser can come up with the page
		// blank (Chromium's child processes give up after 15 s without
		// a connection); then the page is opened once more.
		wctx, wcancel := context.WithTimeout(bctx, 150*time.Second)
		ua, err = s.rp.WaitReady(wctx)
		wcancel()
		if err != nil && bctx.Err() == nil {
			s.logf("%s: the page did not load in 150 s%s; opening it again", name, s.screenshot(name+"-blank"))
			if err = s.b.Open(bctx, s.rp.PageURL()); err == nil {
				ua, err = s.rp.WaitReady(bctx)
			}
		}
	}
	cancel()
	defer func() {
		if err := s.b.Stop(); err != nil {
			s.logf("%s: stopping the browser: %v", name, err)
		}
	}()
	if err != nil {
		shot := s.screenshot(name + "-start")
		report("FAIL", fmt.Sprintf("%s did not load the relying party's page: %v%s", name, err, shot))
		return
	}
	startup := time.Since(start).Round(time.Second)
	s.logf("%s: page loaded after %s: %s", name, startup, ua)
	idle, _ := WaitIdle(ctx, time.Minute)
	s.logf("%s: guest CPU %.0f%% idle after %s", name, 100*idle, time.Since(start).Round(time.Second))

	alice := &User{ID: randomID(), Name: "alice-" + name}
	for _, fl := range Flows {
		f := &flow{name: name + "-" + fl, start: time.Now()}
		if fl == Flows[0] {
			f.logf("browser: %s (start-up %s)", ua, startup)
		}
		fctx, cancel := context.WithTimeout(ctx, 4*time.Minute)
		var err error
		switch fl {
		case "a-non-discoverable":
			err = s.flowA(fctx, f, alice)
		case "b-passkey-pin":
			err = s.flowB(fctx, f)
		case "c-deny":
			err = s.flowC(fctx, f, alice)
		}
		cancel()
		secs := time.Since(f.start).Round(100 * time.Millisecond)
		if err != nil {
			f.logf("daemon log tail: %s", dm.LogTail(8))
			s.rep.Result(f.name, "FAIL", fmt.Sprintf("%v (after %s)%s", err, secs, s.screenshot(f.name)), f.lines)
			continue
		}
		s.rep.Result(f.name, "PASS", fmt.Sprintf("%s: %s", secs, passNote[fl]), f.lines)
	}
}

var passNote = map[string]string{
	"a-non-discoverable": "registered and signed in with allowCredentials, verified by go-webauthn",
	"b-passkey-pin":      "passkey with a PIN typed into the browser's own PIN UI, usernameless sign-in, userHandle matches",
	"c-deny":             "denied at the presence prompt: NotAllowedError; the daemon stayed healthy and served the next sign-in",
}

func (s *session) screenshot(name string) string {
	p, err := s.d.Screenshot(name)
	if err != nil {
		return fmt.Sprintf(" (no screenshot: %v)", err)
	}
	return " (screenshot " + filepath.Base(p) + ")"
}

// ceremony runs one registration or login while the browser's UI is
// watched, then checks the presence prompts the daemon showed.
type ceremony struct {
	label    string
	register bool
	uv       bool
	rk       bool // register: resident; login: discoverable (empty allowCredentials)
	answer   string
}

type outcome struct {
	cred    *webauthn.Credential
	ui      *UI
	prompts []presencetest.Prompt
}

func (s *session) do(ctx context.Context, f *flow, user *User, c ceremony) (outcome, error) {
	if c.answer == "" {
		c.answer = "allow"
	}
	s.d.Notifier.SetAnswer(c.answer)
	s.d.Notifier.Take()
	cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
	defer cancel()
	wctx, stop := context.WithCancel(cctx)
	ui := s.b.Watch(wctx, s.cfg.PIN)
	start := time.Now()
	var (
		o   outcome
		v   Verified
		err error
	)
	if c.register {
		o.cred, v, err = s.rp.Register(cctx, user, c.uv, c.rk)
	} else {
		o.cred, v, err = s.rp.Login(cctx, user, c.uv, c.rk)
	}
	// Let the watcher see the dialog close.
	time.Sleep(300 * time.Millisecond)
	stop()
	ui.Wait()
	o.ui = ui
	o.prompts = s.d.Notifier.Take()
	status := "ok"
	if err != nil {
		status = err.Error()
	}
	f.logf("%s (%s): %s; %s; %s", c.label, time.Since(start).Round(100*time.Millisecond), status, describePrompts(o.prompts), ui)
	for _, l := range v {
		f.logf("  %s", l)
	}
	if uerr := ui.Err(); uerr != nil && err == nil {
		err = fmt.Errorf("%s: the browser UI: %w", c.label, uerr)
	}
	if err != nil {
		return o, err
	}
	want := "Sign in to " + RPID
	if c.register {
		want = "Register with " + RPID
	}
	for _, p := range o.prompts {
		if p.Summary == want && p.Answer == "allow" {
			return o, nil
		}
	}
	return o, fmt.Errorf("%s succeeded without the daemon's presence prompt %q being allowed (prompts: %s)", c.label, want, describePrompts(o.prompts))
}

// flowA: a non-discoverable credential, registered and used with
// allowCredentials; no PIN involved.
func (s *session) flowA(ctx context.Context, f *flow, alice *User) error {
	if _, err := s.do(ctx, f, alice, ceremony{label: "register (residentKey discouraged, UV discouraged)", register: true}); err != nil {
		return err
	}
	_, err := s.do(ctx, f, alice, ceremony{label: "sign in (allowCredentials = the new credential)"})
	return err
}

// flowB: a passkey (residentKey required, UV required) on a key without a
// PIN. The browser has the user set one in its own UI: Chromium inside
// the ceremony; Firefox on its security key page, about:webauthn (inside
// the ceremony Firefox either says the key needs a PIN, or, as Firefox
// 153 does with a key that may make discoverable credentials without UV,
// returns a credential without UV, which the relying party rejects). Then
// a usernameless sign-in (empty allowCredentials, UV required) whose
// userHandle must be the user's id.
func (s *session) flowB(ctx context.Context, f *flow) error {
	bob := &User{ID: randomID(), Name: "bob-" + s.b.Name()}
	reg := ceremony{label: "register passkey (residentKey required, UV required, key has no PIN)", register: true, uv: true, rk: true}
	o, err := s.do(ctx, f, bob, reg)
	var pe *PageError
	switch {
	case err == nil:
		if !o.ui.Has(UIPinSetup) {
			return errors.New("the passkey was made with UV on a key that had no PIN, without the browser asking for a new one")
		}
		f.logf("PIN: set in the browser's create-PIN dialog (typed twice with xdotool)")
	case errors.As(err, &pe) && o.ui.Has(UIPinNotSet), errors.Is(err, ErrNoUV):
		if errors.Is(err, ErrNoUV) {
			f.logf("%s made the passkey without user verification although the relying party required it (the key has no PIN, and allows discoverable credentials without UV); the relying party rejected it", s.b.Name())
		} else {
			f.logf("%s refuses without a PIN and tells the user to set one (%s)", s.b.Name(), pe.Name)
		}
		start := time.Now()
		if err := s.b.SetPIN(ctx, s.cfg.PIN); err != nil {
			return fmt.Errorf("setting the PIN in %s's own UI: %w", s.b.Name(), err)
		}
		f.logf("PIN: set on the browser's security key page (about:webauthn, PIN Management: new PIN typed twice with xdotool) in %s", time.Since(start).Round(100*time.Millisecond))
		reg.label = "register passkey again (residentKey required, UV required, key has a PIN)"
		o, err = s.do(ctx, f, bob, reg)
		if err != nil {
			return err
		}
		if !o.ui.Has(UIPinEntry) {
			return errors.New("the passkey was made without the browser asking for the PIN")
		}
	default:
		return err
	}
	o, err = s.do(ctx, f, bob, ceremony{label: "usernameless sign-in (allowCredentials empty, UV required)", uv: true, rk: true})
	if err != nil {
		return err
	}
	if !o.ui.Has(UIPinEntry) {
		return errors.New("the usernameless sign-in did not go through the browser's PIN prompt")
	}
	return nil
}

// flowC: the user denies at the daemon's presence prompt; the page must
// get NotAllowedError, for a registration and for a sign-in, and the
// daemon must stay up and serve the next sign-in.
func (s *session) flowC(ctx context.Context, f *flow, alice *User) error {
	if len(alice.Creds) == 0 {
		// Flow a failed; this flow needs a credential of its own.
		if _, err := s.do(ctx, f, alice, ceremony{label: "register (flow a left no credential)", register: true}); err != nil {
			return err
		}
	}
	carol := &User{ID: randomID(), Name: "carol-" + s.b.Name()}
	for _, c := range []struct {
		ceremony
		user *User
	}{
		{ceremony{label: "register a new user, user presses Deny", register: true, answer: "deny"}, carol},
		{ceremony{label: "sign in, user presses Deny", answer: "deny"}, alice},
	} {
		o, err := s.do(ctx, f, c.user, c.ceremony)
		var pe *PageError
		if err == nil {
			return fmt.Errorf("%s: the ceremony succeeded", c.label)
		}
		if !errors.As(err, &pe) {
			return err
		}
		if pe.Name != "NotAllowedError" {
			return fmt.Errorf("%s: the page got %s, want NotAllowedError", c.label, pe.Name)
		}
		denied := false
		for _, p := range o.prompts {
			denied = denied || p.Answer == "deny"
		}
		if !denied {
			return fmt.Errorf("%s: NotAllowedError came without the daemon asking (no presence prompt)", c.label)
		}
		if err := s.daemon.Healthy(); err != nil {
			return fmt.Errorf("after %s: %w", c.label, err)
		}
		f.logf("  page got %s (%s); daemon still running", pe.Name, pe.Message)
	}
	_, err := s.do(ctx, f, alice, ceremony{label: "sign in again, user presses Allow"})
	return err
}

func randomID() []byte {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	return b
}

// Main is the guest driver's entry point: it reads the config, runs the
// flows, and returns the process exit code.
func Main(configPath string, stdout io.Writer) int {
	b, err := os.ReadFile(configPath)
	if err != nil {
		fmt.Fprintln(stdout, "E2E-LOG driver: ", err)
		return 1
	}
	var cfg Config
	if err := json.Unmarshal(b, &cfg); err != nil {
		fmt.Fprintln(stdout, "E2E-LOG driver: config: ", err)
		return 1
	}
	home, _ := os.UserHomeDir()
	runtime := os.Getenv("XDG_RUNTIME_DIR")
	logFile, err := os.Create(filepath.Join(cfg.OutDir, "driver.log"))
	if err != nil {
		fmt.Fprintln(stdout, "E2E-LOG driver: ", err)
		return 1
	}
	defer logFile.Close()
	var mu sync.Mutex
	t0 := time.Now()
	logf := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		line := fmt.Sprintf("[%6.1fs] %s", time.Since(t0).Seconds(), fmt.Sprintf(format, args...))
		fmt.Fprintln(logFile, line)
		fmt.Fprintln(stdout, "E2E-INFO "+line)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 14*time.Minute)
	defer cancel()
	// The guest's CPU load every 5 s, in the driver's log only (for
	// reading the timings).
	go func() {
		for ctx.Err() == nil {
			idle, err := WaitIdle(ctx, 0)
			if err != nil {
				return
			}
			mu.Lock()
			fmt.Fprintf(logFile, "[%6.1fs] cpu %3.0f%% busy\n", time.Since(t0).Seconds(), 100*(1-idle))
			mu.Unlock()
			time.Sleep(4 * time.Second)
		}
	}()
	Run(ctx, cfg, home, runtime, &Reporter{W: stdout}, logf)
	return 0
}

// GuestScript is the guest's PID 1 after it switched into the host's
// root: machine set-up as root, then the driver as the desktop user.
//
//go:embed guest.sh
var GuestScript []byte

// describePrompts is a one-line account of the presence prompts the
// desktop's notification server answered, for the test output.
func describePrompts(ps []presencetest.Prompt) string {
	if len(ps) == 0 {
		return "no presence prompt"
	}
	var s []string
	for _, p := range ps {
		s = append(s, fmt.Sprintf("notification %q -> %s", p.Summary, p.Answer))
	}
	return strings.Join(s, ", ")
}
