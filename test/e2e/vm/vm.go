// Package vm builds and boots the end-to-end test machine: a Debian cloud
// kernel under qemu software emulation with a swtpm TPM, an initramfs that
// holds busybox, libfido2's tools, OpenSSH and the static tpm-fido daemon,
// and a small state disk that survives reboots. The guest runs shell
// scenarios and reports them on its serial console as marker lines.
//
// The host test (test/e2e) and the demo (test/e2e/cmd/demo) share it.
package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strings"
)

// ErrUnavailable is wrapped by every error that means "this machine cannot
// run the VM" (a missing program or kernel package), as opposed to a
// failure of the code under test. Tests skip on it.
var ErrUnavailable = errors.New("e2e VM prerequisites unavailable")

// HostPrograms are the host programs the VM needs, by name, with the
// Debian package that provides each.
var HostPrograms = []struct{ Name, Package string }{
	{"qemu-system-x86_64", "qemu-system-x86"},
	{"swtpm", "swtpm"},
	{"busybox", "busybox-static"},
	{"zstd", "zstd"},
	{"fido2-token", "fido2-tools"},
	{"fido2-cred", "fido2-tools"},
	{"fido2-assert", "fido2-tools"},
	{"ssh", "openssh-client"},
	{"ssh-keygen", "openssh-client"},
	{"sshd", "openssh-server"},
	{"pinentry-curses", "pinentry-curses"},
	{"systemd-sysusers", "systemd"},
	{"apt-get", "apt"},
	{"apt-cache", "apt"},
	{"dpkg-deb", "dpkg"},
	{"dpkg-query", "dpkg"},
	{"ldd", "libc-bin"},
}

// Packages lists the Debian packages that provide HostPrograms.
func Packages() []string {
	seen := map[string]bool{}
	var out []string
	for _, p := range HostPrograms {
		if !seen[p.Package] {
			seen[p.Package] = true
			out = append(out, p.Package)
		}
	}
	return out
}

// Tools holds the absolute paths of the host programs.
type Tools map[string]string

// LookTools finds every program in HostPrograms (sshd also in /usr/sbin).
// The error wraps ErrUnavailable and names what to install.
func LookTools() (Tools, error) {
	tools := Tools{}
	var missing []string
	pkgs := map[string]bool{}
	for _, p := range HostPrograms {
		path, err := exec.LookPath(p.Name)
		if err != nil {
			for _, dir := range []string{"/usr/sbin", "/sbin"} {
				if fi, serr := os.Stat(filepath.Join(dir, p.Name)); serr == nil && !fi.IsDir() {
					path, err = filepath.Join(dir, p.Name), nil
					break
				}
			}
		}
		if err != nil {
			missing = append(missing, p.Name)
			pkgs[p.Package] = true
			continue
		}
		tools[p.Name] = path
	}
	if len(missing) > 0 {
		var list []string
		for k := range pkgs {
			list = append(list, k)
		}
		sort.Strings(list)
		return nil, fmt.Errorf("%w: missing %s (apt-get install %s)", ErrUnavailable,
			strings.Join(missing, ", "), strings.Join(list, " "))
	}
	const helper = "/usr/lib/openssh/ssh-sk-helper"
	if _, err := os.Stat(helper); err != nil {
		return nil, fmt.Errorf("%w: %s missing (apt-get install openssh-client)", ErrUnavailable, helper)
	}
	tools["ssh-sk-helper"] = helper
	if out, err := exec.Command(tools["busybox"], "cpio", "--help").CombinedOutput(); err != nil && !bytes.Contains(out, []byte("cpio")) {
		return nil, fmt.Errorf("%w: busybox has no cpio applet", ErrUnavailable)
	}
	return tools, nil
}

// run runs a command and returns its stdout; a failure carries stderr.
func run(ctx context.Context, dir string, name string, args ...string) ([]byte, error) {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return out, fmt.Errorf("%s %s: %w: %s", name, strings.Join(args, " "), err,
			strings.TrimSpace(lastLines(stderr.String(), 10)))
	}
	return out, nil
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// ModuleRoot returns the directory of the tpm-fido Go module containing dir.
func ModuleRoot(ctx context.Context, dir string) (string, error) {
	out, err := run(ctx, dir, "go", "env", "GOMOD")
	if err != nil {
		return "", err
	}
	mod := strings.TrimSpace(string(out))
	if mod == "" || mod == os.DevNull {
		return "", fmt.Errorf("%s is not inside a Go module", dir)
	}
	return filepath.Dir(mod), nil
}

// DaemonEnv names an environment variable that, when set, gives a
// prebuilt static tpm-fido binary for BuildDaemon to use instead of
// building one (for debugging the harness against a given binary).
const DaemonEnv = "TPM_FIDO_E2E_DAEMON"

// BuildDaemon builds ./cmd/tpm-fido of the module at root as a static
// binary at out, or copies $TPM_FIDO_E2E_DAEMON there when that is set.
func BuildDaemon(ctx context.Context, root, out string) error {
	if prebuilt := os.Getenv(DaemonEnv); prebuilt != "" {
		return copyFile(prebuilt, out, 0o755)
	}
	return BuildStatic(ctx, root, "./cmd/tpm-fido", out)
}

// BuildStatic builds the package pkg of the module at root (a path
// relative to root, such as ./cmd/tpm-fido) without cgo, as a static
// binary at out that runs in the guest.
func BuildStatic(ctx context.Context, root, pkg, out string) error {
	cmd := exec.CommandContext(ctx, "go", "build", "-o", out, pkg)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("building %s: %w: %s", pkg, err, lastLines(string(b), 20))
	}
	return nil
}

// copyFile copies src to dst with the given mode, creating dst's directory.
func copyFile(src, dst string, mode os.FileMode) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}
