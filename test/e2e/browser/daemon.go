package browser

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// Faults make the daemon misbehave on purpose, to show that the test
// fails when the key does.
const (
	// FaultDeny: the daemon answers OPERATION_DENIED to every request
	// that needs the user (--presence always-deny).
	FaultDeny = "deny"
	// FaultNoHidraw: the daemon serves on a socket and creates no hidraw
	// node (--transport unix:...).
	FaultNoHidraw = "no-hidraw"
)

// Daemon is a running tpm-fido serve.
type Daemon struct {
	*Proc
	Hidraw string
	log    string
}

// StartDaemon starts binary as the session user with a fresh state
// directory and the desktop notification presence backend, its device
// made by the relay (the system service that alone may open /dev/uhid),
// and waits for its hidraw node to appear and become usable by the user.
func StartDaemon(ctx context.Context, d *Desktop, binary, stateDir, logName, fault string) (*Daemon, error) {
	before, _ := filepath.Glob("/dev/hidraw*")
	args := []string{binary, "serve", "--transport", "relay", "--tpm", "/dev/tpmrm0",
		"--state-dir", stateDir, "--presence", "notification", "--log-level", "debug"}
	switch fault {
	case "":
	case FaultDeny:
		args = append(args, "--presence", "always-deny", "--insecure-test-mode")
	case FaultNoHidraw:
		dir := filepath.Join(os.Getenv("XDG_RUNTIME_DIR"), "tpm-fido")
		if err := os.MkdirAll(dir, 0o700); err != nil {
			return nil, err
		}
		args = append(args, "--transport", "unix:"+filepath.Join(dir, "socket"))
	default:
		return nil, fmt.Errorf("unknown fault %q (want %s or %s)", fault, FaultDeny, FaultNoHidraw)
	}
	p, err := d.Start("tpm-fido", logName, nil, nil, args...)
	if err != nil {
		return nil, err
	}
	dm := &Daemon{Proc: p, log: filepath.Join(d.OutDir, logName)}
	var node string
	err = waitFor(ctx, 30*time.Second, "hidraw node from the daemon", func() bool {
		if ok, _ := p.Exited(); ok {
			return true
		}
		now, _ := filepath.Glob("/dev/hidraw*")
		for _, n := range now {
			if !slices.Contains(before, n) && unix.Access(n, unix.R_OK|unix.W_OK) == nil {
				node = n
				return true
			}
		}
		return false
	})
	if ok, perr := p.Exited(); ok {
		return nil, fmt.Errorf("the daemon exited before its device appeared (%v): %s", perr, dm.LogTail(5))
	}
	if err != nil {
		tail := dm.LogTail(3)
		_ = p.Stop(5 * time.Second)
		return nil, fmt.Errorf("%w, though the daemon runs (its log: %s)", err, tail)
	}
	dm.Hidraw = node
	return dm, nil
}

// Healthy reports whether the daemon is still running.
func (dm *Daemon) Healthy() error {
	if ok, err := dm.Exited(); ok {
		return fmt.Errorf("the daemon exited (%v): %s", err, dm.LogTail(5))
	}
	if _, err := os.Stat(dm.Hidraw); err != nil {
		return fmt.Errorf("the daemon's %s is gone: %w", dm.Hidraw, err)
	}
	return nil
}

// LogTail returns the last n lines of the daemon's log.
func (dm *Daemon) LogTail(n int) string {
	b, _ := os.ReadFile(dm.log)
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}
