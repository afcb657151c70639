package presence

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"time"

	pinentry "github.com/twpayne/go-pinentry/v4"
)

// PinentryPrograms are the programs tried, in order, when neither a flag
// nor $PINENTRY_PROGRAM names one.
var PinentryPrograms = []string{"pinentry-gnome3", "pinentry-qt", "pinentry-gtk-2", "pinentry-curses", "pinentry"}

// FindPinentry returns the pinentry program to run: flag if set, else
// env (the value of $PINENTRY_PROGRAM) if set, else the first of
// PinentryPrograms found by lookPath. It returns ErrUnavailable when none
// is found.
func FindPinentry(flag, env string, lookPath func(string) (string, error)) (string, error) {
	if lookPath == nil {
		lookPath = exec.LookPath
	}
	for _, p := range []string{flag, env} {
		if p == "" {
			continue
		}
		path, err := lookPath(p)
		if err != nil {
			return "", fmt.Errorf("%w: pinentry program %q: %w", ErrUnavailable, p, err)
		}
		return path, nil
	}
	for _, p := range PinentryPrograms {
		if path, err := lookPath(p); err == nil {
			return path, nil
		}
	}
	return "", fmt.Errorf("%w: no pinentry program found (tried %v)", ErrUnavailable, PinentryPrograms)
}

// probeTimeout bounds ProbePinentry: a pinentry answers GETINFO at once.
var probeTimeout = 5 * time.Second

// ProbePinentry starts program as a prompt would and asks it which flavor
// it draws with (Assuan GETINFO flavor). A graphical pinentry without a
// display falls back to curses and says so ("gnome3:curses"). A curses or
// tty flavor draws on the terminal named by gpgTTY (the daemon's
// $GPG_TTY, passed as its ttyname option), of the type term ($TERM):
// without them it has no terminal at all, since its standard input and
// output are the Assuan pipes, so every CONFIRM would fail. ProbePinentry returns what it found, for
// people, or ErrUnavailable with the reason. A pinentry that does not
// know GETINFO flavor is taken as able to prompt.
func ProbePinentry(program, gpgTTY, term string) (string, error) {
	proc := &killableProcess{}
	type result struct {
		flavor string
		err    error
	}
	done := make(chan result, 1)
	go func() {
		flavor, err := getFlavor(proc, program)
		done <- result{flavor, err}
	}()
	var r result
	select {
	case r = <-done:
	case <-time.After(probeTimeout):
		proc.kill()
		<-done
		return "", fmt.Errorf("%w: %s did not answer within %s", ErrUnavailable, program, probeTimeout)
	}
	if r.err != nil {
		return "", fmt.Errorf("%w: %s: %w", ErrUnavailable, program, r.err)
	}
	if !DrawsOnTerminal(r.flavor) {
		return r.flavor, nil
	}
	if gpgTTY == "" {
		return "", fmt.Errorf("%w: %s draws on a terminal (flavor %s) and has none: GPG_TTY is not set", ErrUnavailable, program, r.flavor)
	}
	if term == "" {
		return "", fmt.Errorf("%w: %s draws on a terminal (flavor %s) and TERM is not set", ErrUnavailable, program, r.flavor)
	}
	f, err := os.OpenFile(gpgTTY, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return "", fmt.Errorf("%w: %s draws on a terminal (flavor %s) and cannot open GPG_TTY: %w", ErrUnavailable, program, r.flavor, err)
	}
	f.Close()
	return r.flavor, nil
}

// DrawsOnTerminal reports whether a pinentry flavor needs a terminal.
func DrawsOnTerminal(flavor string) bool {
	return flavor == "curses" || flavor == "tty" || strings.HasSuffix(flavor, ":curses")
}

// getFlavor runs program and returns its answer to GETINFO flavor ("" if
// it has none).
func getFlavor(proc *killableProcess, program string) (string, error) {
	if err := proc.Start(program, nil); err != nil {
		return "", err
	}
	defer proc.Close()
	line, _, err := proc.ReadLine()
	if err != nil {
		return "", fmt.Errorf("no greeting: %w", err)
	}
	if !strings.HasPrefix(string(line), "OK") {
		return "", fmt.Errorf("unexpected greeting %q", line)
	}
	if _, err := proc.Write([]byte("GETINFO flavor\n")); err != nil {
		return "", err
	}
	flavor := ""
	for {
		line, _, err := proc.ReadLine()
		if err != nil {
			return "", fmt.Errorf("GETINFO flavor: %w", err)
		}
		l := string(line)
		switch {
		case strings.HasPrefix(l, "D "):
			flavor = strings.TrimSpace(l[2:])
		case strings.HasPrefix(l, "OK"), strings.HasPrefix(l, "ERR"):
			_, _ = proc.Write([]byte("BYE\n"))
			return flavor, nil
		}
	}
}

// Pinentry asks through a pinentry program with the Assuan CONFIRM
// command. The program is started for each prompt and killed when the
// prompt times out or the client cancels.
type Pinentry struct {
	program string
	timeout time.Duration
	log     *slog.Logger
}

// NewPinentry returns a prompt that runs program (a path or a name on
// $PATH). timeout ≤ 0 means DefaultTimeout.
func NewPinentry(program string, timeout time.Duration, log *slog.Logger) *Pinentry {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Pinentry{program: program, timeout: timeout, log: log}
}

// Confirm implements Prompter.
func (p *Pinentry) Confirm(ctx context.Context, req Request) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	proc := &killableProcess{}
	type result struct {
		ok  bool
		err error
	}
	done := make(chan result, 1)
	go func() {
		c, err := pinentry.NewClient(
			pinentry.WithBinaryName(p.program),
			pinentry.WithProcess(proc),
			pinentry.WithGPGTTY(),
			pinentry.WithTitle("tpm-fido"),
			pinentry.WithDesc(req.Message()),
			pinentry.WithPrompt("Security key"),
			pinentry.WithOK("Allow"),
			pinentry.WithCancel("Deny"),
			// pinentry's own timeout is a backstop; ours is authoritative.
			pinentry.WithTimeout(p.timeout+time.Second),
		)
		if err != nil {
			done <- result{err: err}
			return
		}
		ok, err := c.Confirm("")
		if cerr := c.Close(); err == nil && cerr != nil && !ok {
			err = cerr
		}
		done <- result{ok, err}
	}()

	timer := time.NewTimer(p.timeout)
	defer timer.Stop()
	var stop error
	select {
	case r := <-done:
		switch {
		case r.err != nil && pinentry.IsCancelled(r.err):
			return ErrDenied
		case r.err != nil:
			return fmt.Errorf("%w: pinentry %s: %w", ErrUnavailable, p.program, r.err)
		case r.ok:
			return nil
		default:
			return ErrDenied
		}
	case <-timer.C:
		stop = ErrTimeout
	case <-ctx.Done():
		stop = ctx.Err()
	}
	proc.kill()
	<-done // the client sees EOF once the process is gone
	p.log.Debug("pinentry closed", "reason", stop)
	return stop
}

// killableProcess runs the pinentry program and lets Confirm kill it.
type killableProcess struct {
	mu     sync.Mutex
	cmd    *exec.Cmd
	stdin  io.WriteCloser
	stdout *bufio.Reader
	killed bool
}

func (k *killableProcess) Start(name string, args []string) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.killed {
		return errors.New("pinentry: cancelled before start")
	}
	cmd := exec.Command(name, args...)
	// Its own process group, so a kill also reaches helpers it started.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	stdin, err := cmd.StdinPipe()
	if err != nil {
		return err
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	if err := cmd.Start(); err != nil {
		return err
	}
	k.cmd, k.stdin, k.stdout = cmd, stdin, bufio.NewReader(stdout)
	return nil
}

func (k *killableProcess) ReadLine() ([]byte, bool, error) { return k.stdout.ReadLine() }

func (k *killableProcess) Write(b []byte) (int, error) { return k.stdin.Write(b) }

func (k *killableProcess) Close() error {
	err := k.stdin.Close()
	if werr := k.cmd.Wait(); err == nil && !k.isKilled() {
		err = werr
	}
	return err
}

func (k *killableProcess) isKilled() bool {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.killed
}

func (k *killableProcess) kill() {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.killed = true
	if k.cmd != nil && k.cmd.Process != nil {
		_ = syscall.Kill(-k.cmd.Process.Pid, syscall.SIGKILL)
	}
}
