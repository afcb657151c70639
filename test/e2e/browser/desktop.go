package browser

import (
	"bufio"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"image"
	"image/color"
	"image/png"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/tpm-fido/tpm-fido/presence/presencetest"
)

// Desktop is the graphical session of the guest user: an X server (Xvfb,
// no window manager), a D-Bus session bus with a desktop notification
// server, and the environment every program of the session gets. The
// notification server stands in for the user in front of the screen: the
// daemon's presence backend "notification" shows its prompt with
// Allow/Deny actions, and the server presses the button the flow chose.
type Desktop struct {
	Env      []string
	Display  string
	Bus      string
	Notifier *presencetest.Notifier
	OutDir   string
	fbDir    string
	procs    []*Proc
	logf     func(string, ...any)
}

// Proc is a background process of the session.
type Proc struct {
	Name string
	Cmd  *exec.Cmd
	done chan struct{}
	err  error
}

// Exited reports whether the process has ended, and how.
func (p *Proc) Exited() (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	default:
		return false, nil
	}
}

// Wait waits for the process to end, at most d.
func (p *Proc) Wait(d time.Duration) (bool, error) {
	select {
	case <-p.done:
		return true, p.err
	case <-time.After(d):
		return false, nil
	}
}

// Stop sends SIGTERM to the process group, then SIGKILL after grace.
func (p *Proc) Stop(grace time.Duration) error {
	if ok, err := p.Exited(); ok {
		return err
	}
	_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGTERM)
	if ok, err := p.Wait(grace); ok {
		return err
	}
	_ = syscall.Kill(-p.Cmd.Process.Pid, syscall.SIGKILL)
	<-p.done
	return fmt.Errorf("%s did not stop within %s of SIGTERM", p.Name, grace)
}

// Start starts a session program in its own process group; its output
// goes to OutDir/logName and, line by line, to lines (when not nil).
func (d *Desktop) Start(name, logName string, lines func(string), env []string, args ...string) (*Proc, error) {
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Env = append(append([]string(nil), d.Env...), env...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	logf, err := os.Create(filepath.Join(d.OutDir, logName))
	if err != nil {
		return nil, err
	}
	pr, pw := io.Pipe()
	cmd.Stdout, cmd.Stderr = pw, pw
	if err := cmd.Start(); err != nil {
		logf.Close()
		return nil, fmt.Errorf("starting %s: %w", name, err)
	}
	p := &Proc{Name: name, Cmd: cmd, done: make(chan struct{})}
	var copied sync.WaitGroup
	copied.Add(1)
	go func() {
		defer copied.Done()
		sc := bufio.NewScanner(pr)
		sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
		for sc.Scan() {
			fmt.Fprintln(logf, sc.Text())
			if lines != nil {
				lines(sc.Text())
			}
		}
		_, _ = io.Copy(io.Discard, pr)
	}()
	go func() {
		p.err = cmd.Wait()
		pw.Close()
		copied.Wait()
		logf.Close()
		close(p.done)
	}()
	d.procs = append(d.procs, p)
	return p, nil
}

// StartDesktop starts Xvfb and the session bus with the notification
// server. home and runtime are the user's home and XDG_RUNTIME_DIR.
func StartDesktop(ctx context.Context, home, runtime, outDir string, logf func(string, ...any)) (*Desktop, error) {
	d := &Desktop{Display: ":99", OutDir: outDir, fbDir: filepath.Join(runtime, "xvfb"), logf: logf}
	d.Bus = "unix:path=" + filepath.Join(runtime, "bus")
	d.Env = []string{
		"HOME=" + home, "USER=" + os.Getenv("USER"), "LOGNAME=" + os.Getenv("USER"),
		"PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8", "SHELL=/bin/sh",
		"XDG_RUNTIME_DIR=" + runtime, "DISPLAY=" + d.Display, "DBUS_SESSION_BUS_ADDRESS=" + d.Bus,
		"NO_AT_BRIDGE=1",
	}
	if err := os.MkdirAll(d.fbDir, 0o700); err != nil {
		return nil, err
	}
	if _, err := d.Start("Xvfb", "xvfb.log", nil, nil, "Xvfb", d.Display, "-screen", "0", "1280x900x24",
		"-nolisten", "tcp", "-noreset", "-fbdir", d.fbDir); err != nil {
		return nil, err
	}
	if err := waitFor(ctx, 30*time.Second, "the X server's socket", func() bool {
		_, err := os.Stat("/tmp/.X11-unix/X99")
		return err == nil
	}); err != nil {
		return nil, err
	}
	busSock := filepath.Join(runtime, "bus")
	if _, err := d.Start("dbus-daemon", "dbus.log", nil, nil, "dbus-daemon", "--session", "--nofork", "--nopidfile",
		"--address="+d.Bus); err != nil {
		return nil, err
	}
	if err := waitFor(ctx, 30*time.Second, "the session bus socket", func() bool {
		_, err := os.Stat(busSock)
		return err == nil
	}); err != nil {
		return nil, err
	}
	// A person takes a moment to read the prompt.
	n, err := presencetest.StartNotifier(d.Bus, "allow", 300*time.Millisecond)
	if err != nil {
		return nil, err
	}
	d.Notifier = n
	return d, nil
}

// Close stops every session program, last started first.
func (d *Desktop) Close() {
	if d.Notifier != nil {
		d.Notifier.Close()
	}
	for i := len(d.procs) - 1; i >= 0; i-- {
		_ = d.procs[i].Stop(5 * time.Second)
	}
}

// Xdo runs xdotool on the session's display: real key and pointer events
// through the X server (XTEST), as a person at the keyboard makes them.
// With no window manager the focus follows the pointer, so the pointer is
// first moved over the browser window.
func (d *Desktop) Xdo(args ...string) error {
	cmd := exec.Command("xdotool", args...)
	cmd.Env = d.Env
	out, err := cmd.CombinedOutput()
	if err != nil {
		return fmt.Errorf("xdotool %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Type types text into the window under the pointer, then presses keys.
func (d *Desktop) Type(text string, keys ...string) error {
	if err := d.Xdo("mousemove", "600", "500"); err != nil {
		return err
	}
	if text != "" {
		if err := d.Xdo("type", "--delay", "60", text); err != nil {
			return err
		}
	}
	for _, k := range keys {
		if err := d.Xdo("key", k); err != nil {
			return err
		}
	}
	return nil
}

// Screenshot saves the screen as OutDir/name.png (Xvfb keeps it as an
// XWD image in its -fbdir).
func (d *Desktop) Screenshot(name string) (string, error) {
	b, err := os.ReadFile(filepath.Join(d.fbDir, "Xvfb_screen0"))
	if err != nil {
		return "", err
	}
	img, err := decodeXWD(b)
	if err != nil {
		return "", err
	}
	p := filepath.Join(d.OutDir, name+".png")
	f, err := os.Create(p)
	if err != nil {
		return "", err
	}
	if err := png.Encode(f, img); err != nil {
		f.Close()
		return "", err
	}
	return p, f.Close()
}

// decodeXWD decodes the 32-bit TrueColor XWD image Xvfb writes.
func decodeXWD(b []byte) (image.Image, error) {
	if len(b) < 100 {
		return nil, errors.New("XWD image too short")
	}
	f := func(i int) int { return int(binary.BigEndian.Uint32(b[i*4:])) }
	hdr, w, h, bpp, bpl, ncol := f(0), f(4), f(5), f(11), f(12), f(19)
	if bpp != 32 || w <= 0 || h <= 0 || w > 1<<14 || h > 1<<14 {
		return nil, fmt.Errorf("unsupported XWD image: %dx%d, %d bits per pixel", w, h, bpp)
	}
	off := hdr + ncol*12
	if off < 0 || off+h*bpl > len(b) || bpl < w*4 {
		return nil, errors.New("XWD image truncated")
	}
	img := image.NewRGBA(image.Rect(0, 0, w, h))
	lsb := f(7) == 0 // byte_order LSBFirst: pixels are B, G, R, x
	for y := 0; y < h; y++ {
		row := b[off+y*bpl:]
		for x := 0; x < w; x++ {
			p := row[x*4 : x*4+4]
			if lsb {
				img.SetRGBA(x, y, color.RGBA{p[2], p[1], p[0], 255})
			} else {
				img.SetRGBA(x, y, color.RGBA{p[1], p[2], p[3], 255})
			}
		}
	}
	return img, nil
}

// waitFor polls cond every 100 ms until it holds, limit passes or ctx ends.
func waitFor(ctx context.Context, limit time.Duration, what string, cond func() bool) error {
	deadline := time.Now().Add(limit)
	for !cond() {
		if time.Now().After(deadline) {
			return fmt.Errorf("no %s after %s", what, limit)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s: %w", what, context.Cause(ctx))
		case <-time.After(100 * time.Millisecond):
		}
	}
	return nil
}

// WaitIdle waits until the guest's CPUs were at least half idle over one
// second, at most limit: a browser that has just shown its page is still
// busy starting, and under emulation a busy guest can stall the browser's
// HID writes long enough for the key to time a message out.
func WaitIdle(ctx context.Context, limit time.Duration) (float64, error) {
	sample := func() (idle, total uint64, err error) {
		b, err := os.ReadFile("/proc/stat")
		if err != nil {
			return 0, 0, err
		}
		line, _, _ := strings.Cut(string(b), "\n")
		f := strings.Fields(line)
		if len(f) < 5 || f[0] != "cpu" {
			return 0, 0, fmt.Errorf("unexpected /proc/stat: %q", line)
		}
		for i, v := range f[1:] {
			var n uint64
			if _, err := fmt.Sscan(v, &n); err != nil {
				return 0, 0, err
			}
			total += n
			if i == 3 || i == 4 { // idle, iowait
				idle += n
			}
		}
		return idle, total, nil
	}
	deadline := time.Now().Add(limit)
	var frac float64
	for {
		i0, t0, err := sample()
		if err != nil {
			return 0, err
		}
		select {
		case <-ctx.Done():
			return frac, context.Cause(ctx)
		case <-time.After(time.Second):
		}
		i1, t1, err := sample()
		if err != nil {
			return 0, err
		}
		if t1 > t0 {
			frac = float64(i1-i0) / float64(t1-t0)
		}
		if frac >= 0.5 || time.Now().After(deadline) {
			return frac, nil
		}
	}
}
