package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tpm-fido/tpm-fido/test/otheruser"
)

// TestNotDumpable: the binary makes itself non-dumpable at start
// (prctl PR_SET_DUMPABLE 0): no core dump, and no other process of the
// same user may ptrace it or read its memory through /proc. Shown the way
// the kernel enforces it: a process of the same uid may not read
// /proc/PID/environ (the same access check as /proc/PID/mem), while it may
// for an ordinary process of that uid (the control, so the test can fail).
// When the test runs as root, both run as uid 65534.
func TestNotDumpable(t *testing.T) {
	// The relay, run as the other user, makes its socket next to it.
	exe := otheruser.Executable(t, daemonBinary(t), 0o777)
	dir := filepath.Dir(exe)
	attr := &syscall.SysProcAttr{}
	if os.Getuid() == 0 {
		attr = otheruser.SysProcAttr()
	}
	start := func(name string, args ...string) *exec.Cmd {
		cmd := exec.Command(name, args...)
		cmd.SysProcAttr = attr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			cmd.Process.Signal(syscall.SIGTERM)
			cmd.Wait()
		})
		return cmd
	}
	readEnviron := func(pid int) error {
		cmd := exec.Command("head", "-c", "1", "/proc/"+strconv.Itoa(pid)+"/environ")
		cmd.SysProcAttr = attr
		out, err := cmd.CombinedOutput()
		if err != nil {
			return fmt.Errorf("%v: %s", err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	sock := filepath.Join(dir, "relay.sock")
	daemon := start(exe, "relay", "--socket", sock, "--users-file", "")
	control := start("sleep", "60")
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i == 200 {
			t.Fatal("the relay did not start")
		}
		time.Sleep(25 * time.Millisecond)
	}
	if err := readEnviron(control.Process.Pid); err != nil {
		t.Fatalf("control: a process of the same uid cannot read an ordinary process's /proc/PID/environ either (%v); the check shows nothing here", err)
	}
	err := readEnviron(daemon.Process.Pid)
	if err == nil || !strings.Contains(err.Error(), "Permission denied") {
		t.Fatalf("reading the tpm-fido process's /proc/%d/environ as its own uid: %v, want permission denied", daemon.Process.Pid, err)
	}
	t.Logf("same uid, tpm-fido process: %v; ordinary process: readable", err)
}
