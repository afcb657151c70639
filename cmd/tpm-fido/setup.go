package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/tpm-fido/tpm-fido/contrib/systemd"
	"github.com/tpm-fido/tpm-fido/udev"
)

// tpmGroup is the group that may use the TPM device: Debian's tpm-udev
// creates it and gives it /dev/tpmrm0.
const tpmGroup = "tss"

// setupFile is one file setup installs.
type setupFile struct {
	path string // absolute, inside the root
	data []byte
}

// runSetup installs the udev rules, the modules-load.d entry and the
// systemd user unit, embedded in this binary. It is idempotent: a file
// that already has the right content is left alone. The steps that are
// not file writes (groups, modprobe, udevadm, systemctl) are printed, in
// the order that makes each one work, and never run.
func runSetup(args []string, stdout, stderr io.Writer) int {
	fl := newFlagSet("setup", "setup [FLAGS]",
		"Install the udev rules, the module loading entry and the systemd user unit\n"+
			"(all embedded in this binary), then print the steps left to do, which it\n"+
			"never runs itself. Running it twice changes nothing.")
	dryRun := fl.Bool("dry-run", false, "print what would change, change nothing")
	root := fl.String("root", "/", "install below this root `DIR` (for packaging and tests)")
	user := fl.Bool("user", false, "install only the user unit, into $XDG_CONFIG_HOME/systemd/user (no root needed)")
	binary := fl.String("binary", "", "`PATH` of the installed tpm-fido binary for ExecStart (default: this executable)")
	if code, ok := fl.parse(args, 0, 0, stdout, stderr); !ok {
		return code
	}
	bin := *binary
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintf(stderr, "tpm-fido setup: cannot find this executable (use --binary): %v\n", err)
			return 1
		}
		if r, err := filepath.EvalSymlinks(exe); err == nil {
			exe = r
		}
		bin = exe
	}
	if !filepath.IsAbs(bin) {
		return fl.usageError(stderr, "--binary %q must be an absolute path", bin)
	}

	var files []setupFile
	if *user {
		cfg := os.Getenv("XDG_CONFIG_HOME")
		if cfg == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				fmt.Fprintf(stderr, "tpm-fido setup: %v\n", err)
				return 1
			}
			cfg = filepath.Join(home, ".config")
		}
		files = []setupFile{{filepath.Join(cfg, "systemd", "user", systemd.UnitName), systemd.Unit(bin)}}
	} else {
		files = []setupFile{
			{filepath.Join(*root, "etc", "udev", "rules.d", udev.RulesName), udev.Rules},
			{filepath.Join(*root, "etc", "modules-load.d", udev.ModulesLoadName), udev.ModulesLoad},
			{filepath.Join(*root, "etc", "systemd", "user", systemd.UnitName), systemd.Unit(bin)},
		}
	}

	failed := false
	changed := map[string]bool{}
	for _, f := range files {
		state, err := installFile(f, *dryRun)
		switch {
		case err != nil && errors.Is(err, fs.ErrPermission):
			fmt.Fprintf(stdout, "needs root: %s (run `sudo tpm-fido setup`)\n", f.path)
			failed = true
		case err != nil:
			fmt.Fprintf(stdout, "failed:     %s: %v\n", f.path, err)
			failed = true
		default:
			fmt.Fprintf(stdout, "%-11s %s\n", state+":", f.path)
			changed[filepath.Base(f.path)] = state != "unchanged"
		}
	}

	// What the files cannot do by themselves.
	var next []string
	if !*user {
		groups := filepath.Join(*root, "etc", "group")
		if !groupExists(groups, tpmGroup) {
			// Else usermod below fails as a whole.
			next = append(next, "sudo apt-get install tpm-udev   # creates the "+tpmGroup+" group, which may use /dev/tpmrm0")
		}
		if !groupExists(groups, udev.Group) {
			next = append(next, "sudo groupadd --system "+udev.Group)
		}
		next = append(next, `sudo usermod -aG `+udev.Group+`,`+tpmGroup+` "$USER"   # then log out and in again`)
		if changed[udev.ModulesLoadName] || *root == "/" && !exists("/sys/module/uhid") {
			next = append(next, "sudo modprobe uhid")
		}
		if changed[udev.RulesName] {
			next = append(next, "sudo udevadm control --reload && sudo udevadm trigger --subsystem-match=misc --sysname-match=uhid")
		}
	}
	if changed[systemd.UnitName] {
		next = append(next, "systemctl --user daemon-reload")
	}
	next = append(next, "systemctl --user enable --now tpm-fido   # as your user, not root")
	if *dryRun {
		fmt.Fprintln(stdout, "dry run: nothing was changed")
	} else if len(changed) > 0 && !anyTrue(changed) {
		fmt.Fprintln(stdout, "nothing changed: everything was already installed")
	}
	fmt.Fprintln(stdout, "\nthen run, in this order (setup never runs these itself):")
	for _, s := range next {
		fmt.Fprintln(stdout, "  "+s)
	}
	if failed {
		return 1
	}
	return 0
}

// installFile writes f if its content differs, atomically (temporary
// file and rename), mode 0644. It returns "created", "updated" or
// "unchanged" ("would create"/"would update" in a dry run).
func installFile(f setupFile, dryRun bool) (string, error) {
	old, err := os.ReadFile(f.path)
	switch {
	case err == nil && bytes.Equal(old, f.data):
		return "unchanged", nil
	case err != nil && !errors.Is(err, fs.ErrNotExist):
		return "", err
	}
	state := "updated"
	if err != nil {
		state = "created"
	}
	if dryRun {
		return "would " + strings.TrimSuffix(state, "d"), nil
	}
	dir := filepath.Dir(f.path)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	tmp, err := os.CreateTemp(dir, "."+filepath.Base(f.path)+".*")
	if err != nil {
		return "", err
	}
	defer os.Remove(tmp.Name()) // no-op after the rename
	if _, err := tmp.Write(f.data); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Sync(); err != nil {
		tmp.Close()
		return "", err
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	if err := os.Rename(tmp.Name(), f.path); err != nil {
		return "", err
	}
	return state, nil
}

// groupExists reports whether an /etc/group file names group.
func groupExists(path, group string) bool {
	f, err := os.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if name, _, ok := strings.Cut(sc.Text(), ":"); ok && name == group {
			return true
		}
	}
	return false
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

func anyTrue(m map[string]bool) bool {
	for _, v := range m {
		if v {
			return true
		}
	}
	return false
}
