package main

import (
	"bufio"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/tpm-fido/tpm-fido/test/e2e/vm"
)

// TestSIGTERMCleansUp: a demo stopped with SIGTERM (as by systemd, timeout
// or kill) ends through its own clean-up, as on Ctrl-C, and leaves no
// temporary directory behind. The signal comes right after the demo made
// its work directory, before any VM is booted.
func TestSIGTERMCleansUp(t *testing.T) {
	if _, err := vm.LookTools(); errors.Is(err, vm.ErrUnavailable) {
		t.Skipf("the demo's host programs are missing: %v", err)
	}
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skip("go tool not found: cannot build the demo")
	}
	bin := filepath.Join(t.TempDir(), "demo")
	if out, err := exec.Command(goTool, "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("go build: %v\n%s", err, out)
	}
	tmp := t.TempDir()
	cmd := exec.Command(bin, "-cache", filepath.Join(t.TempDir(), "cache"))
	cmd.Env = append(os.Environ(), "TMPDIR="+tmp)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill() })
	lines := bufio.NewScanner(stdout)
	for lines.Scan() && !strings.Contains(lines.Text(), "getting the Debian cloud kernel") {
	}
	if entries, _ := os.ReadDir(tmp); len(entries) == 0 {
		t.Fatal("the demo made no work directory in $TMPDIR before fetching the kernel")
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	go func() {
		for lines.Scan() { // drain, so the demo never blocks on stdout
		}
	}()
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		t.Fatalf("the demo did not end within 60 s of SIGTERM; stderr:\n%s", stderr.String())
	}
	if ws := cmd.ProcessState.Sys().(syscall.WaitStatus); ws.Signaled() {
		t.Fatalf("the demo was killed by %v instead of stopping itself", ws.Signal())
	}
	entries, _ := os.ReadDir(tmp)
	var left []string
	for _, e := range entries {
		left = append(left, e.Name())
	}
	if len(left) > 0 {
		t.Fatalf("left behind in $TMPDIR after SIGTERM: %v", left)
	}
}
