// Package otheruser runs part of a test as another local user, for tests
// of what a user other than the daemon's may or may not do (reach its
// socket, ask the relay for a device, read a state it does not own). The
// other user is nobody (uid and gid 65534); switching to it needs root,
// so callers skip without it.
package otheruser

import (
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
)

// UID is the other user's uid, and its gid.
const UID = 65534

// SysProcAttr makes a command run as UID.
func SysProcAttr() *syscall.SysProcAttr {
	return &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: UID, Gid: UID}}
}

// Test is a copy of the running test binary that UID may execute (the
// build directory is private), in a directory of its own (0755) that is
// removed when the test ends.
type Test struct {
	exe string
	dir string
}

// Copy makes the copy.
func Copy(t testing.TB) *Test {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	c := &Test{exe: Executable(t, exe, 0o755)}
	c.dir = filepath.Dir(c.exe)
	return c
}

// Executable copies the program at src into a new directory with mode
// dirMode, outside the private build directory, where UID may run it,
// and returns the copy's path. The directory is removed when the test
// ends.
func Executable(t testing.TB, src string, dirMode os.FileMode) string {
	t.Helper()
	bin, err := os.ReadFile(src)
	if err != nil {
		t.Fatal(err)
	}
	dir, err := os.MkdirTemp("", "tpm-fido-otheruser-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	if err := os.Chmod(dir, dirMode); err != nil {
		t.Fatal(err)
	}
	exe := filepath.Join(dir, filepath.Base(src))
	if err := os.WriteFile(exe, bin, 0o755); err != nil {
		t.Fatal(err)
	}
	return exe
}

// Run runs the test function named test of the copy as UID, verbosely,
// with env added to the environment and HOME set to the copy's directory,
// and returns what it printed and how it ended. The test tells from env
// that it plays the other user's part.
func (c *Test) Run(test string, env ...string) ([]byte, error) {
	cmd := exec.Command(c.exe, "-test.run=^"+test+"$", "-test.count=1", "-test.v")
	cmd.Env = append(append(os.Environ(), "HOME="+c.dir), env...)
	cmd.SysProcAttr = SysProcAttr()
	return cmd.CombinedOutput()
}
