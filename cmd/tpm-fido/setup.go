package main

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"strings"

	"github.com/tpm-fido/tpm-fido/contrib/systemd"
	"github.com/tpm-fido/tpm-fido/relay"
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

// runSetup installs the udev rules, the modules-load.d entry, the
// sysusers.d entry (group uhid and the relay's system user), the relay's
// system unit, the list of users the relay serves and the systemd user
// unit, all embedded in this binary. It is idempotent: a file that
// already has the right content is left alone, and the users list only
// ever gains the users named. The steps that are not file writes
// (sysusers, modprobe, udevadm, systemctl, the tss group) are printed, in
// the order that makes each one work, and never run. Nobody is put in
// group uhid: the relay holds /dev/uhid for every user.
func runSetup(args []string, stdout, stderr io.Writer) int {
	fl := newFlagSet("setup", "setup [FLAGS]",
		"Install the udev rules, the module loading entry, the relay's system user\n"+
			"and system unit, the list of users it serves, and the systemd user unit\n"+
			"(all embedded in this binary), then print the steps left to do, which it\n"+
			"never runs itself. Running it twice changes nothing. Users get no right\n"+
			"on /dev/uhid: the relay service creates the key's device for them.")
	dryRun := fl.Bool("dry-run", false, "print what would change, change nothing")
	root := fl.String("root", "/", "install below this root `DIR` (for packaging and tests)")
	user := fl.Bool("user", false, "install only the user unit, into $XDG_CONFIG_HOME/systemd/user (no root needed)")
	binary := fl.String("binary", "", "`PATH` of the installed tpm-fido binary for ExecStart (default: this executable)")
	var allow stringList
	fl.Var(&allow, "allow-user", "a `USER` (name or uid) whose daemon the relay serves, added to "+relay.DefaultUsersFile+" as its uid (repeatable; default: the user who ran sudo)")
	if code, ok := fl.parse(args, 0, 0, stdout, stderr); !ok {
		return code
	}
	bin := *binary
	if bin == "" {
		exe, err := os.Executable()
		if err != nil {
			fmt.Fprintf(stderr, "tpm-fido setup: cannot find this executable (use --binary): %v\n", err)
			return exitFail
		}
		if r, err := filepath.EvalSymlinks(exe); err == nil {
			exe = r
		}
		bin = exe
	}
	if !filepath.IsAbs(bin) {
		return fl.usageError(stderr, "--binary %q must be an absolute path", bin)
	}
	var add []relayUser
	for _, a := range allow {
		u, err := lookupRelayUser(a)
		if err != nil {
			fmt.Fprintf(stderr, "tpm-fido setup: --allow-user %s: %v\n", a, err)
			return exitFail
		}
		add = append(add, u)
	}
	if len(allow) == 0 {
		if u := os.Getenv("SUDO_USER"); u != "" && u != "root" {
			// sudo says the uid too: no lookup, so a user only NSS
			// knows (LDAP, sssd, systemd-homed) is named right.
			if id := os.Getenv("SUDO_UID"); isUID(id) {
				add = []relayUser{{uid: id, name: u}}
			} else if ru, err := lookupRelayUser(u); err == nil {
				add = []relayUser{ru}
			} else {
				fmt.Fprintf(stderr, "tpm-fido setup: the user who ran sudo, %s: %v\n", u, err)
				return exitFail
			}
		}
	}

	var files []setupFile
	usersPath := filepath.Join(*root, strings.TrimPrefix(relay.DefaultUsersFile, "/"))
	var users []string
	if *user {
		cfg := os.Getenv("XDG_CONFIG_HOME")
		if cfg == "" {
			home, err := os.UserHomeDir()
			if err != nil {
				fmt.Fprintf(stderr, "tpm-fido setup: %v\n", err)
				return exitFail
			}
			cfg = filepath.Join(home, ".config")
		}
		files = []setupFile{{filepath.Join(cfg, "systemd", "user", systemd.UnitName), systemd.Unit(bin)}}
	} else {
		var usersFile []byte
		usersFile, users = relayUsers(usersPath, add)
		files = []setupFile{
			{filepath.Join(*root, "etc", "udev", "rules.d", udev.RulesName), udev.Rules},
			{filepath.Join(*root, "etc", "modules-load.d", udev.ModulesLoadName), udev.ModulesLoad},
			{filepath.Join(*root, "etc", "sysusers.d", systemd.SysusersName), systemd.Sysusers},
			{filepath.Join(*root, "etc", "systemd", "system", systemd.RelayUnitName), systemd.RelayUnit(bin)},
			{usersPath, usersFile},
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
	if !*user {
		if len(users) == 0 {
			fmt.Fprintf(stdout, "the relay serves nobody yet: name the desktop user with --allow-user NAME\n")
		} else {
			fmt.Fprintf(stdout, "the relay serves the daemons of: %s\n", strings.Join(users, ", "))
		}
	}

	// What the files cannot do by themselves.
	var next []string
	if !*user {
		groups := filepath.Join(*root, "etc", "group")
		if len(users) == 0 {
			next = append(next, `sudo tpm-fido setup --allow-user "$USER"   # the user whose daemon the relay serves`)
		}
		if changed[systemd.SysusersName] || !groupExists(groups, udev.Group) {
			next = append(next, "sudo systemd-sysusers   # creates group "+udev.Group+" and the system user "+systemd.RelayUser+" in it")
		}
		if !groupExists(groups, tpmGroup) {
			// Else usermod below fails.
			next = append(next, "sudo apt-get install tpm-udev   # creates the "+tpmGroup+" group, which may use /dev/tpmrm0")
		}
		next = append(next, `sudo usermod -aG `+tpmGroup+` "$USER"   # the TPM only (not uhid); then log out and in again`)
		// Users an earlier install put in group uhid do not need it any
		// more, and should not keep it.
		for _, m := range groupMembers(groups, udev.Group) {
			if m != systemd.RelayUser {
				next = append(next, "sudo gpasswd -d "+m+" "+udev.Group+"   # the relay holds /dev/uhid now; "+m+" must not be able to create a keyboard")
			}
		}
		if changed[udev.ModulesLoadName] || *root == "/" && !exists("/sys/module/uhid") {
			next = append(next, "sudo modprobe uhid")
		}
		if changed[udev.RulesName] || changed[systemd.SysusersName] {
			next = append(next, "sudo udevadm control --reload && sudo udevadm trigger --subsystem-match=misc --sysname-match=uhid")
		}
		if changed[systemd.RelayUnitName] {
			next = append(next, "sudo systemctl daemon-reload")
		}
		next = append(next, "sudo systemctl enable --now "+systemd.RelayUnitName)
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
		return exitFail
	}
	return exitOK
}

// relayUsersHeader starts the relay's list of users.
const relayUsersHeader = `# The users whose tpm-fido daemon the relay (tpm-fido-relay.service)
# serves: one uid (or user name) per line, '#' starts a comment. Read at
# every connection, so a change needs no restart. Written by
# ` + "`tpm-fido setup --allow-user NAME`" + `, as the uid with the name as a comment:
# the relay resolves names from /etc/passwd only, so a user that only
# LDAP, sssd or systemd-homed knows must be listed by uid.
`

// relayUser is a user the relay serves: the uid is what goes in the
// file (the relay checks the peer's uid), the name only as a comment.
type relayUser struct {
	uid  string // decimal
	name string // "" when unknown
}

func (u relayUser) String() string {
	if u.name == "" {
		return "uid " + u.uid
	}
	return u.name + " (uid " + u.uid + ")"
}

// line is the users-file line for u.
func (u relayUser) line() string {
	if u.name == "" {
		return u.uid
	}
	return u.uid + " # " + u.name
}

func isUID(s string) bool {
	if s == "" || len(s) > 10 {
		return false
	}
	for _, c := range s {
		if c < '0' || c > '9' {
			return false
		}
	}
	return true
}

// lookupRelayUser resolves a user name or uid for the relay's list. The
// release binary has no cgo, so os/user reads /etc/passwd alone; users
// from LDAP, sssd or systemd-homed come through NSS, which getent asks.
// A variable, so that tests can name users this machine does not have.
var lookupRelayUser = func(nameOrUID string) (relayUser, error) {
	if isUID(nameOrUID) {
		u := relayUser{uid: nameOrUID}
		if pw, err := user.LookupId(nameOrUID); err == nil {
			u.name = pw.Username
		} else if f, err := getentPasswd(nameOrUID); err == nil {
			u.name = f[0]
		}
		return u, nil
	}
	if pw, err := user.Lookup(nameOrUID); err == nil {
		return relayUser{uid: pw.Uid, name: pw.Username}, nil
	}
	f, err := getentPasswd(nameOrUID)
	if err != nil {
		return relayUser{}, fmt.Errorf("no such user (%v); give the numeric uid instead: --allow-user UID", err)
	}
	return relayUser{uid: f[2], name: f[0]}, nil
}

// getentPasswd asks NSS for a passwd entry (`getent passwd KEY`) and
// returns its fields.
func getentPasswd(key string) ([]string, error) {
	out, err := exec.Command("getent", "passwd", key).Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && ee.ExitCode() == 2 {
			return nil, fmt.Errorf("getent passwd %s: not found", key)
		}
		return nil, fmt.Errorf("getent passwd %s: %w", key, err)
	}
	line, _, _ := strings.Cut(string(out), "\n")
	f := strings.Split(line, ":")
	if len(f) < 7 || !isUID(f[2]) {
		return nil, fmt.Errorf("getent passwd %s: unexpected answer %q", key, line)
	}
	return f, nil
}

// relayUsers returns the users file with every user in add present
// (lines already there are kept as they are), and the users it names.
// A user counts as present when a line names its uid, or a name the
// relay itself resolves to it (from /etc/passwd); else its uid is
// added, with the name as a comment.
func relayUsers(path string, add []relayUser) ([]byte, []string) {
	old, err := os.ReadFile(path)
	if err != nil {
		old = []byte(relayUsersHeader)
	}
	var users []string
	have := map[string]bool{} // uids, and the names as written
	for _, l := range strings.Split(string(old), "\n") {
		l, comment, _ := strings.Cut(l, "#")
		l = strings.TrimSpace(l)
		if l == "" || have[l] {
			continue
		}
		have[l] = true
		switch {
		case isUID(l):
			users = append(users, relayUser{uid: l, name: strings.TrimSpace(comment)}.String())
		default:
			users = append(users, l)
			if pw, err := user.Lookup(l); err == nil {
				have[pw.Uid] = true
			}
		}
	}
	out := old
	if len(out) > 0 && out[len(out)-1] != '\n' {
		out = append(out, '\n')
	}
	for _, u := range add {
		if !have[u.uid] {
			have[u.uid] = true
			users = append(users, u.String())
			out = append(out, u.line()+"\n"...)
		}
	}
	return out, users
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

// groupMembers returns the members an /etc/group file lists for group.
func groupMembers(path, group string) []string {
	f, err := os.Open(path)
	if err != nil {
		return nil
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Split(sc.Text(), ":")
		if len(fields) == 4 && fields[0] == group && fields[3] != "" {
			return strings.Split(fields[3], ",")
		}
	}
	return nil
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
