package main

import (
	"bytes"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite testdata/golden files")

func runCmd(t *testing.T, args ...string) (stdout, stderr string, rc int) {
	t.Helper()
	var o, e bytes.Buffer
	rc = run(args, &o, &e)
	return o.String(), e.String(), rc
}

// readTree returns path → content for every file under dir.
func readTree(t *testing.T, dir string) map[string]string {
	t.Helper()
	files := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		files[rel] = string(b)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return files
}

// fakeUsers makes setup resolve the given names to uids (users this
// machine does not have); other names are not found.
func fakeUsers(t *testing.T, uids map[string]string) {
	t.Helper()
	old := lookupRelayUser
	lookupRelayUser = func(n string) (relayUser, error) {
		if id, ok := uids[n]; ok {
			return relayUser{uid: id, name: n}, nil
		}
		if isUID(n) {
			return relayUser{uid: n}, nil
		}
		return relayUser{}, fmt.Errorf("no such user %q", n)
	}
	t.Cleanup(func() { lookupRelayUser = old })
}

func TestSetupGolden(t *testing.T) {
	fakeUsers(t, map[string]string{"alice": "1001"})
	root := t.TempDir()
	out, errOut, rc := runCmd(t, "setup", "--root", root, "--binary", "/usr/bin/tpm-fido", "--allow-user", "alice")
	if rc != 0 {
		t.Fatalf("setup exit %d: %s", rc, errOut)
	}
	out = strings.ReplaceAll(out, root, "$ROOT")
	got := readTree(t, root)
	got["stdout"] = out

	golden := filepath.Join("testdata", "golden", "setup")
	if *update {
		os.RemoveAll(golden)
		for p, c := range got {
			path := filepath.Join(golden, p)
			if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(path, []byte(c), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	want := readTree(t, golden)
	for p, w := range want {
		if got[p] != w {
			t.Errorf("%s differs from %s:\n--- got\n%s\n--- want\n%s", p, filepath.Join(golden, p), got[p], w)
		}
	}
	for p := range got {
		if _, ok := want[p]; !ok {
			t.Errorf("setup wrote unexpected %s", p)
		}
	}
	for _, p := range []string{"etc/udev/rules.d/70-tpm-fido.rules", "etc/systemd/user/tpm-fido.service",
		"etc/systemd/system/tpm-fido-relay.service", "etc/sysusers.d/tpm-fido.conf", "etc/tpm-fido/relay-users"} {
		fi, err := os.Stat(filepath.Join(root, p))
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != 0o644 {
			t.Errorf("%s mode %v, want 0644", p, fi.Mode().Perm())
		}
	}
}

func TestSetupTwiceChangesNothing(t *testing.T) {
	root := t.TempDir()
	if _, e, rc := runCmd(t, "setup", "--root", root, "--binary", "/usr/bin/tpm-fido"); rc != 0 {
		t.Fatal(e)
	}
	before := readTree(t, root)
	var stamps []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, _ error) error {
		if fi, err := d.Info(); err == nil && !d.IsDir() {
			stamps = append(stamps, p+fi.ModTime().String())
		}
		return nil
	})
	out, e, rc := runCmd(t, "setup", "--root", root, "--binary", "/usr/bin/tpm-fido")
	if rc != 0 {
		t.Fatal(e)
	}
	if strings.Contains(out, "created") || strings.Contains(out, "updated") || !strings.Contains(out, "nothing changed") {
		t.Errorf("second run reported changes:\n%s", out)
	}
	if strings.Contains(out, "daemon-reload") || strings.Contains(out, "udevadm control") {
		t.Errorf("second run asks for reloads although nothing changed:\n%s", out)
	}
	after := readTree(t, root)
	if len(before) != len(after) {
		t.Fatalf("files before %d, after %d", len(before), len(after))
	}
	var stamps2 []string
	filepath.WalkDir(root, func(p string, d fs.DirEntry, _ error) error {
		if fi, err := d.Info(); err == nil && !d.IsDir() {
			stamps2 = append(stamps2, p+fi.ModTime().String())
		}
		return nil
	})
	if strings.Join(stamps, "\n") != strings.Join(stamps2, "\n") {
		t.Errorf("second run rewrote files")
	}

	// A changed file is put back, and reported as updated.
	unit := filepath.Join(root, "etc/systemd/user/tpm-fido.service")
	os.WriteFile(unit, []byte("[Service]\n"), 0o644)
	out, _, _ = runCmd(t, "setup", "--root", root, "--binary", "/usr/bin/tpm-fido")
	if !strings.Contains(out, "updated:    "+unit) {
		t.Errorf("a damaged unit was not reported as updated:\n%s", out)
	}
	if b, _ := os.ReadFile(unit); string(b) != before["etc/systemd/user/tpm-fido.service"] {
		t.Errorf("damaged unit not restored")
	}
}

func TestSetupDryRun(t *testing.T) {
	root := t.TempDir()
	out, e, rc := runCmd(t, "setup", "--dry-run", "--root", root, "--binary", "/usr/bin/tpm-fido")
	if rc != 0 {
		t.Fatal(e)
	}
	if n := len(readTree(t, root)); n != 0 {
		t.Fatalf("dry run wrote %d files", n)
	}
	if !strings.Contains(out, "would create") || !strings.Contains(out, "dry run") {
		t.Errorf("dry run output:\n%s", out)
	}
}

func TestSetupUnitVerifies(t *testing.T) {
	analyze, err := exec.LookPath("systemd-analyze")
	if err != nil {
		t.Skip("systemd-analyze not installed")
	}
	root := t.TempDir()
	bin := filepath.Join(root, "tpm-fido")
	if err := os.WriteFile(bin, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if _, e, rc := runCmd(t, "setup", "--root", root, "--binary", bin); rc != 0 {
		t.Fatal(e)
	}
	rt := filepath.Join(root, "run")
	os.Mkdir(rt, 0o700)
	for _, args := range [][]string{
		{"--user", "--man=no", "verify", filepath.Join(root, "etc/systemd/user/tpm-fido.service")},
		{"--man=no", "verify", filepath.Join(root, "etc/systemd/system/tpm-fido-relay.service")},
	} {
		cmd := exec.Command(analyze, args...)
		cmd.Env = append(os.Environ(), "XDG_RUNTIME_DIR="+rt, "HOME="+root)
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("systemd-analyze %v: %v\n%s", args, err, out)
		}
		// verify exits 0 on some bad lines, but warns: any output is a problem.
		if len(bytes.TrimSpace(out)) != 0 {
			t.Fatalf("systemd-analyze %v warned:\n%s", args, out)
		}
	}
}

func TestSetupUser(t *testing.T) {
	cfg := t.TempDir()
	t.Setenv("XDG_CONFIG_HOME", cfg)
	out, e, rc := runCmd(t, "setup", "--user", "--binary", "/usr/bin/tpm-fido")
	if rc != 0 {
		t.Fatal(e)
	}
	files := readTree(t, cfg)
	if len(files) != 1 || files["systemd/user/tpm-fido.service"] == "" {
		t.Fatalf("--user wrote %v", files)
	}
	if !strings.Contains(files["systemd/user/tpm-fido.service"], "ExecStart=/usr/bin/tpm-fido serve") {
		t.Errorf("ExecStart not filled in")
	}
	if strings.Contains(out, "groupadd") || strings.Contains(out, "udevadm") {
		t.Errorf("--user output mentions system steps:\n%s", out)
	}
	if _, _, rc := runCmd(t, "setup", "--binary", "relative/path", "--dry-run"); rc != 2 {
		t.Errorf("relative --binary accepted: rc %d", rc)
	}
}

// TestSetupRelayUsers: setup adds users to the relay's list and keeps
// what is there; the user who ran sudo is the default; members an older
// install put in group uhid are told to leave it; nobody is put in it.
func TestSetupRelayUsers(t *testing.T) {
	fakeUsers(t, map[string]string{"bob": "1002", "carol": "1003", "dave": "1004"})
	root := t.TempDir()
	users := filepath.Join(root, "etc/tpm-fido/relay-users")
	os.MkdirAll(filepath.Dir(users), 0o755)
	os.WriteFile(users, []byte("# ours\nbob   # the laptop's owner\n1004 # dave\n"), 0o644)
	os.MkdirAll(filepath.Join(root, "etc"), 0o755)
	os.WriteFile(filepath.Join(root, "etc/group"), []byte("root:x:0:\ntss:x:107:bob\nuhid:x:998:bob,tpm-fido-relay\n"), 0o644)
	t.Setenv("SUDO_USER", "carol")
	t.Setenv("SUDO_UID", "")
	out, e, rc := runCmd(t, "setup", "--root", root, "--binary", "/usr/bin/tpm-fido")
	if rc != 0 {
		t.Fatal(e)
	}
	b, _ := os.ReadFile(users)
	if string(b) != "# ours\nbob   # the laptop's owner\n1004 # dave\n1003 # carol\n" {
		t.Errorf("users file:\n%s", b)
	}
	if !strings.Contains(out, "the relay serves the daemons of: bob, dave (uid 1004), carol (uid 1003)") {
		t.Errorf("output does not name the users:\n%s", out)
	}
	// dave and carol are listed by uid already.
	if out, _, _ := runCmd(t, "setup", "--root", root, "--binary", "/usr/bin/tpm-fido", "--allow-user", "dave", "--allow-user", "1003"); !strings.Contains(out, "unchanged:  "+users) {
		t.Errorf("users listed by uid changed the file:\n%s", out)
	}
	// A user setup cannot resolve is refused, and nothing is written.
	if _, e, rc := runCmd(t, "setup", "--root", root, "--binary", "/usr/bin/tpm-fido", "--allow-user", "nosuchuser"); rc == 0 || !strings.Contains(e, "give the numeric uid instead") && !strings.Contains(e, "no such user") {
		t.Errorf("an unknown user: rc %d %q", rc, e)
	}
	if !strings.Contains(out, "sudo gpasswd -d bob uhid") || strings.Contains(out, "gpasswd -d tpm-fido-relay") {
		t.Errorf("output does not take bob (only) out of group uhid:\n%s", out)
	}
	if strings.Contains(out, "usermod -aG uhid") || strings.Contains(out, "uhid,tss") {
		t.Errorf("setup still puts users in group uhid:\n%s", out)
	}
	// bob is listed by a name the relay cannot resolve (it reads only
	// /etc/passwd, which does not have him): his uid is added.
	if _, e, rc := runCmd(t, "setup", "--root", root, "--binary", "/usr/bin/tpm-fido", "--allow-user", "bob"); rc != 0 {
		t.Fatal(e)
	}
	if b, _ := os.ReadFile(users); !strings.HasSuffix(string(b), "1003 # carol\n1002 # bob\n") {
		t.Errorf("bob, listed by a name the relay cannot resolve: users file\n%s", b)
	}
	// No user at all: setup says how to name one.
	t.Setenv("SUDO_USER", "")
	root2 := t.TempDir()
	out, _, rc = runCmd(t, "setup", "--root", root2, "--binary", "/usr/bin/tpm-fido")
	if rc != 0 || !strings.Contains(out, `sudo tpm-fido setup --allow-user "$USER"`) {
		t.Errorf("no user named: rc %d\n%s", rc, out)
	}
}

// TestSetupUserOnlyNSSKnows: the release binary has no cgo, so os/user
// reads only /etc/passwd. A user that only NSS knows (LDAP, sssd,
// systemd-homed) is still written as a uid: from sudo's SUDO_UID, or
// from getent (here a stand-in getent first on PATH that knows one
// such user, as NSS would); the names /etc/passwd has resolve as
// before, and a uid is taken as it is.
func TestSetupUserOnlyNSSKnows(t *testing.T) {
	bin := t.TempDir()
	getent := "#!/bin/sh\n[ \"$1\" = passwd ] || exit 1\ncase \"$2\" in\n" +
		"ldapuser|70001) echo 'ldapuser:*:70001:70001:LDAP User:/home/ldapuser:/bin/bash' ;;\n" +
		"*) exit 2 ;;\nesac\n"
	if err := os.WriteFile(filepath.Join(bin, "getent"), []byte(getent), 0o755); err != nil {
		t.Fatal(err)
	}
	t.Setenv("PATH", bin+":"+os.Getenv("PATH"))
	for in, want := range map[string]string{"root": "0 # root", "0": "0 # root", "ldapuser": "70001 # ldapuser", "70001": "70001 # ldapuser", "123456": "123456"} {
		u, err := lookupRelayUser(in)
		if err != nil || u.line() != want {
			t.Errorf("lookupRelayUser(%q) = %q, %v; want %q", in, u.line(), err, want)
		}
	}
	if _, err := lookupRelayUser("nosuchuser-tpm-fido"); err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("unknown user: %v", err)
	}
	root := t.TempDir()
	users := filepath.Join(root, "etc/tpm-fido/relay-users")
	if out, e, rc := runCmd(t, "setup", "--root", root, "--binary", "/usr/bin/tpm-fido", "--allow-user", "ldapuser"); rc != 0 || !strings.Contains(out, "the relay serves the daemons of: ldapuser (uid 70001)") {
		t.Fatalf("--allow-user ldapuser: rc %d %s %s", rc, out, e)
	}
	// sudo names the uid: no lookup at all.
	t.Setenv("SUDO_USER", "homeduser")
	t.Setenv("SUDO_UID", "60513")
	if _, e, rc := runCmd(t, "setup", "--root", root, "--binary", "/usr/bin/tpm-fido"); rc != 0 {
		t.Fatal(e)
	}
	b, _ := os.ReadFile(users)
	if !strings.HasSuffix(string(b), "\n70001 # ldapuser\n60513 # homeduser\n") {
		t.Errorf("users file:\n%s", b)
	}
}
