package presence

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

// fakePinentry writes a shell script that speaks enough Assuan to answer
// CONFIRM according to mode (allow, deny, hang), logging each command
// and its pid into dir.
func fakePinentry(t *testing.T, mode string) (prog, logPath, pidPath string) {
	t.Helper()
	if _, err := os.Stat("/bin/sh"); err != nil {
		t.Skip("no /bin/sh")
	}
	dir := t.TempDir()
	logPath = filepath.Join(dir, "log")
	pidPath = filepath.Join(dir, "pid")
	var answer string
	switch mode {
	case "allow":
		answer = "echo OK"
	case "deny":
		answer = "echo 'ERR 83886179 Operation cancelled <Pinentry>'"
	case "notconfirmed":
		answer = "echo ASSUAN_Not_Confirmed"
	case "hang":
		answer = "exec sleep 600"
	}
	script := fmt.Sprintf(`#!/bin/sh
echo $$ > %q
echo "OK Pleased to meet you"
while IFS= read -r line; do
  printf '%%s\n' "$line" >> %q
  case "$line" in
    CONFIRM*) %s ;;
    BYE) echo OK; exit 0 ;;
    *) echo OK ;;
  esac
done
`, pidPath, logPath, answer)
	prog = filepath.Join(dir, "pinentry-fake")
	if err := os.WriteFile(prog, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return prog, logPath, pidPath
}

func pinentryReq() Request { return Request{Op: OpRegister, RPID: "github.com"} }

func TestPinentryAllow(t *testing.T) {
	prog, logPath, _ := fakePinentry(t, "allow")
	p := NewPinentry(prog, 10*time.Second, nil)
	if err := p.Confirm(context.Background(), pinentryReq()); err != nil {
		t.Fatalf("Confirm = %v, want nil", err)
	}
	log, err := os.ReadFile(logPath)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"SETDESC Register with github.com", "SETOK Allow", "SETCANCEL Deny", "SETTITLE tpm-fido", "CONFIRM"} {
		if !strings.Contains(string(log), want) {
			t.Errorf("pinentry did not get %q; log:\n%s", want, log)
		}
	}
}

func TestPinentryDeny(t *testing.T) {
	for _, mode := range []string{"deny", "notconfirmed"} {
		t.Run(mode, func(t *testing.T) {
			prog, _, _ := fakePinentry(t, mode)
			p := NewPinentry(prog, 10*time.Second, nil)
			if err := p.Confirm(context.Background(), pinentryReq()); !errors.Is(err, ErrDenied) {
				t.Fatalf("Confirm = %v, want ErrDenied", err)
			}
		})
	}
}

func waitGone(t *testing.T, pidPath string) {
	t.Helper()
	b, err := os.ReadFile(pidPath)
	if err != nil {
		t.Fatalf("pinentry never started: %v", err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil {
		t.Fatal(err)
	}
	if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
		t.Errorf("pinentry process %d still exists after the prompt ended (kill 0: %v)", pid, err)
	}
}

func TestPinentryCancel(t *testing.T) {
	prog, logPath, pidPath := fakePinentry(t, "hang")
	p := NewPinentry(prog, time.Minute, nil)
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		// Cancel once the program is waiting in CONFIRM.
		for {
			if b, _ := os.ReadFile(logPath); strings.Contains(string(b), "CONFIRM") {
				cancel()
				return
			}
			time.Sleep(10 * time.Millisecond)
		}
	}()
	if err := p.Confirm(ctx, pinentryReq()); !errors.Is(err, context.Canceled) {
		t.Fatalf("Confirm = %v, want context.Canceled", err)
	}
	waitGone(t, pidPath)
}

func TestPinentryTimeout(t *testing.T) {
	prog, _, pidPath := fakePinentry(t, "hang")
	p := NewPinentry(prog, 300*time.Millisecond, nil)
	if err := p.Confirm(context.Background(), pinentryReq()); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Confirm = %v, want ErrTimeout", err)
	}
	waitGone(t, pidPath)
}

func TestPinentryMissingProgram(t *testing.T) {
	p := NewPinentry(filepath.Join(t.TempDir(), "nope"), time.Second, nil)
	if err := p.Confirm(context.Background(), pinentryReq()); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Confirm = %v, want ErrUnavailable", err)
	}
}

func TestFindPinentry(t *testing.T) {
	have := map[string]bool{"pinentry-qt": true, "pinentry": true, "/opt/my-pinentry": true}
	look := func(name string) (string, error) {
		if have[name] {
			return name, nil
		}
		return "", errors.New("not found")
	}
	cases := []struct{ flag, env, want string }{
		{"", "", "pinentry-qt"},
		{"", "/opt/my-pinentry", "/opt/my-pinentry"},
		{"pinentry", "/opt/my-pinentry", "pinentry"},
	}
	for _, c := range cases {
		got, err := FindPinentry(c.flag, c.env, look)
		if err != nil || got != c.want {
			t.Errorf("FindPinentry(%q, %q) = %q, %v; want %q", c.flag, c.env, got, err, c.want)
		}
	}
	if _, err := FindPinentry("pinentry-missing", "", look); !errors.Is(err, ErrUnavailable) {
		t.Errorf("a missing flag program: err = %v, want ErrUnavailable (no silent fallback)", err)
	}
	none := func(string) (string, error) { return "", errors.New("not found") }
	if _, err := FindPinentry("", "", none); !errors.Is(err, ErrUnavailable) {
		t.Errorf("nothing installed: err = %v, want ErrUnavailable", err)
	}
}

// flavorPinentry writes a pinentry that answers GETINFO flavor with
// flavor, and fails every CONFIRM the way a curses pinentry without a
// terminal does.
func flavorPinentry(t *testing.T, flavor string) string {
	t.Helper()
	script := fmt.Sprintf(`#!/bin/sh
echo "OK Pleased to meet you"
while IFS= read -r line; do
  case "$line" in
    "GETINFO flavor") echo "D %s"; echo OK ;;
    CONFIRM*) echo "ERR 83918950 Inappropriate ioctl for device <Pinentry>" ;;
    BYE) echo OK; exit 0 ;;
    *) echo OK ;;
  esac
done
`, flavor)
	prog := filepath.Join(t.TempDir(), "pinentry-flavor")
	if err := os.WriteFile(prog, []byte(script), 0o755); err != nil {
		t.Fatal(err)
	}
	return prog
}

// TestProbePinentryCurses: the real pinentry-curses, asked as a prompt
// would ask it, needs a terminal: without GPG_TTY (a daemon under
// systemd) or TERM it cannot prompt, and ProbePinentry says why.
func TestProbePinentryCurses(t *testing.T) {
	prog, err := exec.LookPath("pinentry-curses")
	if err != nil {
		t.Skip("pinentry-curses not installed")
	}
	_, err = ProbePinentry(prog, "", "xterm")
	if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "GPG_TTY is not set") {
		t.Errorf("no GPG_TTY: %v, want ErrUnavailable naming GPG_TTY", err)
	}
	_, tty := openPTY(t)
	if _, err := ProbePinentry(prog, tty, ""); !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "TERM is not set") {
		t.Errorf("no TERM: %v, want ErrUnavailable naming TERM", err)
	}
	if _, err := ProbePinentry(prog, "/nonexistent/tty", "xterm"); !errors.Is(err, ErrUnavailable) {
		t.Errorf("GPG_TTY that does not open: %v, want ErrUnavailable", err)
	}
	got, err := ProbePinentry(prog, tty, "xterm")
	if err != nil || got != "curses" {
		t.Errorf("with a terminal: %q, %v; want curses", got, err)
	}
}

// TestChooseTriesPinentryLikeServe: with only a curses pinentry and no
// terminal, --presence pinentry is unavailable (with the reason) and auto
// does not pick it; a graphical one falling back to curses is the same;
// a graphical flavor is picked.
func TestChooseTriesPinentryLikeServe(t *testing.T) {
	for _, tc := range []struct {
		flavor string
		ok     bool
	}{
		{"curses", false},
		{"gnome3:curses", false},
		{"tty", false},
		{"gnome3", true},
		{"qt", true},
	} {
		prog := flavorPinentry(t, tc.flavor)
		opts := Options{
			BusAddress:      "unix:path=/nonexistent/bus",
			PinentryProgram: prog,
			Getenv:          func(string) string { return "" },
			TTYPath:         "/nonexistent/tty",
		}
		c, err := Choose(BackendPinentry, opts)
		if tc.ok {
			if err != nil || c.Backend != BackendPinentry || !strings.Contains(c.Detail, "flavor "+tc.flavor) {
				t.Errorf("%s: Choose(pinentry) = %+v, %v", tc.flavor, c, err)
			}
			continue
		}
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "GPG_TTY is not set") {
			t.Errorf("%s: Choose(pinentry) = %+v, %v; want ErrUnavailable naming GPG_TTY", tc.flavor, c, err)
		}
		_, err = Choose(BackendAuto, opts)
		if !errors.Is(err, ErrUnavailable) || !strings.Contains(err.Error(), "GPG_TTY is not set") {
			t.Errorf("%s: Choose(auto) = %v; want ErrUnavailable with pinentry's reason", tc.flavor, err)
		}
		if _, err := New(BackendPinentry, opts); !errors.Is(err, ErrUnavailable) {
			t.Errorf("%s: New(pinentry) = %v, want ErrUnavailable", tc.flavor, err)
		}
	}
}
