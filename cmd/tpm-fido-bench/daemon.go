package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
)

// daemonResult holds the figures of the real daemon binary.
type daemonResult struct {
	FirstStart time.Duration   // new state directory
	Restarts   []time.Duration // existing state (new state with the simulator)
	// FreshState: every start had a new state directory, because the
	// simulator is a new TPM on every start.
	FreshState bool
	RSSIdleKB  int
	RSSLoadKB  int
	LoadN      int
	LoadTime   time.Duration
	// LoadSwitches are the context switches during the load: a check
	// that the idle counts below measure something.
	LoadSwitches int
	IdleBefore   idleSample   // after start, before the load
	IdleAfter    []idleSample // consecutive windows after the load
}

// idleSample is what the daemon did during an idle window.
type idleSample struct {
	Window     time.Duration
	CtxSwitch  int // voluntary + nonvoluntary, summed over threads
	CPUTicks   int // utime + stime, in clock ticks (1/100 s)
	Threads    int
	PerThreads map[string]int // switches by thread id
}

// findDaemon returns the tpm-fido binary to run, building it when asked.
func findDaemon(flagValue string, log *slog.Logger) (string, func(), error) {
	switch flagValue {
	case "none":
		return "", func() {}, nil
	case "":
	default:
		return flagValue, func() {}, nil
	}
	dir, err := os.MkdirTemp("", "tpm-fido-bench-bin-")
	if err != nil {
		return "", nil, err
	}
	bin := filepath.Join(dir, "tpm-fido")
	log.Info("building the daemon", "out", bin)
	cmd := exec.Command("go", "build", "-o", bin, "./cmd/tpm-fido")
	cmd.Stderr = os.Stderr
	if err := cmd.Run(); err != nil {
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("building ./cmd/tpm-fido (run from the module root, or pass --daemon PATH or --daemon none): %w", err)
	}
	return bin, func() { os.RemoveAll(dir) }, nil
}

// daemon is one running tpm-fido serve.
type daemon struct {
	cmd    *exec.Cmd
	sock   string
	stderr bytes.Buffer
}

func startDaemon(bin, spec, stateDir, sock string, extra ...string) (*daemon, time.Duration, error) {
	d := &daemon{sock: sock}
	d.cmd = exec.Command(bin, append([]string{"serve", "--transport", "unix:" + sock, "--tpm", spec,
		"--state-dir", stateDir, "--presence", "always-allow", "--insecure-test-mode", "--log-level", "warn"}, extra...)...)
	d.cmd.Stderr = &d.stderr
	t0 := time.Now()
	if err := d.cmd.Start(); err != nil {
		return nil, 0, err
	}
	exited := make(chan struct{})
	go func() { _, _ = d.cmd.Process.Wait(); close(exited) }()
	for {
		if answersInit(sock) {
			return d, time.Since(t0), nil
		}
		select {
		case <-exited:
			return nil, 0, fmt.Errorf("daemon exited before it was ready: %s", d.stderr.String())
		default:
		}
		if time.Since(t0) > 60*time.Second {
			d.stop()
			return nil, 0, fmt.Errorf("daemon not ready after 60 s: %s", d.stderr.String())
		}
		time.Sleep(time.Millisecond)
	}
}

// answersInit reports whether the socket answers a CTAPHID INIT.
func answersInit(sock string) bool {
	c, err := ctaphidtest.DialUnix(sock, 2*time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	_, err = c.Init()
	return err == nil
}

func (d *daemon) stop() {
	_ = d.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = d.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = d.cmd.Process.Kill()
		<-done
	}
}

func measureDaemon(ctx context.Context, bin, spec, dir string, o options, log *slog.Logger) (*daemonResult, error) {
	stateDir := filepath.Join(dir, "state-daemon")
	sock := filepath.Join(dir, "run", "daemon.sock")
	res := &daemonResult{FreshState: spec == "simulator"}
	var d *daemon
	for i := range max(o.Starts, 2) {
		if d != nil {
			d.stop()
		}
		sd := stateDir
		if res.FreshState {
			sd = fmt.Sprintf("%s-%d", stateDir, i)
		}
		var took time.Duration
		var err error
		d, took, err = startDaemon(bin, spec, sd, sock)
		if err != nil {
			return nil, err
		}
		if i == 0 {
			res.FirstStart = took
		} else {
			res.Restarts = append(res.Restarts, took)
		}
	}
	defer d.stop()
	pid := d.cmd.Process.Pid
	log.Info("daemon ready; idle window", "pid", pid, "window", o.Idle)
	time.Sleep(time.Second) // let start-up work finish
	var err error
	if res.RSSIdleKB, err = vmRSS(pid); err != nil {
		return nil, err
	}
	if res.IdleBefore, err = idleWindow(ctx, pid, o.Idle); err != nil {
		return nil, err
	}

	ch, err := ctaphidtest.DialChannel(sock, 30*time.Second)
	if err != nil {
		return nil, err
	}
	cdh := sha256.Sum256([]byte("load"))
	ad, err := ch.MakeCredential(ctaphidtest.MakeCredentialParams("load.example", []byte("u"), cdh[:], false, false, nil))
	if err != nil {
		ch.Close()
		return nil, err
	}
	before, err := sampleProc(pid)
	if err != nil {
		ch.Close()
		return nil, err
	}
	t0 := time.Now()
	for i := range o.Load {
		if i%20 == 19 {
			_, err = ch.MakeCredential(ctaphidtest.MakeCredentialParams("load.example", fmt.Appendf(nil, "u%d", i), cdh[:], false, false, nil))
		} else {
			_, err = ch.GetAssertion(ctaphidtest.GetAssertionParams("load.example", cdh[:], false, ad.CredID))
		}
		if err != nil {
			ch.Close()
			return nil, fmt.Errorf("load request %d: %w", i, err)
		}
	}
	res.LoadTime = time.Since(t0)
	res.LoadN = o.Load
	after, err := sampleProc(pid)
	if err != nil {
		ch.Close()
		return nil, err
	}
	for tid, n := range after.switches {
		res.LoadSwitches += n - before.switches[tid]
	}
	ch.Close()
	time.Sleep(time.Second)
	if res.RSSLoadKB, err = vmRSS(pid); err != nil {
		return nil, err
	}
	for range max(o.IdleWindows, 1) {
		w, err := idleWindow(ctx, pid, o.Idle)
		if err != nil {
			return nil, err
		}
		res.IdleAfter = append(res.IdleAfter, w)
	}
	if d.stderr.Len() > 0 {
		log.Info("daemon stderr", "text", d.stderr.String())
	}
	return res, nil
}

// vmRSS reads VmRSS (kB) from /proc/PID/status.
func vmRSS(pid int) (int, error) { return procStatusKB(pid, "VmRSS:") }

type procSample struct {
	switches map[string]int
	ticks    int
}

func sampleProc(pid int) (procSample, error) {
	s := procSample{switches: map[string]int{}}
	tasks, err := os.ReadDir(fmt.Sprintf("/proc/%d/task", pid))
	if err != nil {
		return s, err
	}
	for _, t := range tasks {
		b, err := os.ReadFile(fmt.Sprintf("/proc/%d/task/%s/status", pid, t.Name()))
		if err != nil {
			continue // the thread exited
		}
		n := 0
		for _, l := range strings.Split(string(b), "\n") {
			for _, k := range []string{"voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:"} {
				if v, ok := strings.CutPrefix(l, k); ok {
					x, _ := strconv.Atoi(strings.TrimSpace(v))
					n += x
				}
			}
		}
		s.switches[t.Name()] = n
	}
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return s, err
	}
	// Fields after the command name in parentheses: state is field 3,
	// utime 14, stime 15.
	rest := string(b[bytes.LastIndexByte(b, ')')+2:])
	f := strings.Fields(rest)
	if len(f) < 13 {
		return s, errors.New("short /proc/PID/stat")
	}
	ut, _ := strconv.Atoi(f[11])
	st, _ := strconv.Atoi(f[12])
	s.ticks = ut + st
	return s, nil
}

// idleWindow counts the daemon's context switches and CPU time over w
// while nobody talks to it.
func idleWindow(ctx context.Context, pid int, w time.Duration) (idleSample, error) {
	a, err := sampleProc(pid)
	if err != nil {
		return idleSample{}, err
	}
	select {
	case <-time.After(w):
	case <-ctx.Done():
		return idleSample{}, ctx.Err()
	}
	b, err := sampleProc(pid)
	if err != nil {
		return idleSample{}, err
	}
	s := idleSample{Window: w, CPUTicks: b.ticks - a.ticks, Threads: len(b.switches), PerThreads: map[string]int{}}
	for tid, n := range b.switches {
		if d := n - a.switches[tid]; d > 0 {
			s.PerThreads[tid] = d
			s.CtxSwitch += d
		}
	}
	return s, nil
}

func median(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	return s[len(s)/2]
}

func p99(d []time.Duration) time.Duration {
	s := slices.Clone(d)
	slices.Sort(s)
	i := (len(s)*99+99)/100 - 1
	return s[min(max(i, 0), len(s)-1)]
}
