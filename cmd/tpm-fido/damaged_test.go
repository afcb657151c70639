//go:build cgo

package main

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/binary"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tpm-fido/tpm-fido/ctap/ctap2/pinuv"
	"github.com/tpm-fido/tpm-fido/test/otheruser"
	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// damageCmd is one command run against a damaged copy of the state.
type damageCmd struct {
	name  string
	stdin string
	run   func(dir string) (stdout, stderr string, rc int)
}

func damageCommands(t *testing.T, sock string) []damageCmd {
	cli := func(args ...string) func(string) (string, string, int) {
		return func(dir string) (string, string, int) {
			var o, e bytes.Buffer
			rc := run(append(append([]string(nil), args...), "--state-dir="+dir), &o, &e)
			return o.String(), e.String(), rc
		}
	}
	bogus := base64.RawURLEncoding.EncodeToString(bytes.Repeat([]byte{7}, 64))
	return []damageCmd{
		{name: "list", run: cli("list")},
		{name: "list --authorized-keys", run: cli("list", "--authorized-keys")},
		{name: "pin status", run: cli("pin", "status")},
		{name: "delete", run: func(dir string) (string, string, int) {
			var o, e bytes.Buffer
			rc := run([]string{"delete", "--state-dir=" + dir, bogus}, &o, &e)
			return o.String(), e.String(), rc
		}},
		{name: "reset (answered no)", stdin: "no\n", run: cli("reset")},
		{name: "serve", run: func(dir string) (string, string, int) {
			// The daemon up to the point where it would serve: transport,
			// TPM, store; a done context ends it there.
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			var o, e bytes.Buffer
			rc := runServeContext(ctx, []string{"--transport", "unix:" + sock, "--tpm", "simulator",
				"--presence", "always-allow", "--insecure-test-mode", "--log-level", "error", "--state-dir", dir}, &o, &e)
			return o.String(), e.String(), rc
		}},
		{name: "doctor (state check)", run: func(dir string) (string, string, int) {
			var o bytes.Buffer
			rc := printChecks(&o, []check{doctorEnv{tpm: "simulator", stateDir: dir}.checkStateDir()})
			return o.String(), "", rc
		}},
	}
}

// realState makes a state directory the way a user's would be: resident
// credentials (an SSH one and a web one), a PIN, counter values taken.
func realState(t *testing.T) (dir string, db []byte) {
	dir, tpm := withSimulator(t)
	s, err := tpmstore.Open(tpmstore.Config{TPM: tpm, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	addResident(t, s, "ssh:", "openssh")
	addResident(t, s, "github.com", "alice")
	addResident(t, s, "example.org", "bob")
	if err := s.SetPIN(pinuv.PINHash([]byte("4821-test"))); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 3; i++ {
		if _, err := s.NextCounter(); err != nil {
			t.Fatal(err)
		}
	}
	s.Close()
	db, err = os.ReadFile(tpmstore.StatePath(dir))
	if err != nil {
		t.Fatal(err)
	}
	return dir, db
}

type damageVariant struct {
	name string
	data []byte
}

// damageVariants: the database truncated at many lengths, and with one
// bit flipped at many offsets. Three sizes: "full"
// (TPM_FIDO_FAULT_FULL=1: every byte of every page in use, a different
// bit each time, and every 64th length), the default (every byte of the
// first 48 of each page in use, where the page header, the database
// header and the first elements are, every 251st byte elsewhere, every
// 1024th length) and "short" (-short or the race detector: a quarter).
func damageVariants(db []byte, mode string) []damageVariant {
	const pageSize = 4096
	// Pages in use: the high-water mark in the first header page.
	inUse := len(db) / pageSize
	if len(db) >= 64 {
		if n := int(binary.NativeEndian.Uint64(db[16+40:])); n > 0 && n < inUse {
			inUse = n
		}
	}
	step, head, sparse := 1024, 48, 251
	switch mode {
	case "full":
		step, head, sparse = 64, pageSize, 1
	case "short":
		step, head, sparse = 4096, 12, 997
	}
	var vs []damageVariant
	for n := 0; n < len(db); n += step {
		vs = append(vs, damageVariant{fmt.Sprintf("truncated to %d bytes", n), db[:n]})
	}
	for _, n := range []int{1, 16383, 16384, 16385, len(db) - 1} {
		if n > 0 && n < len(db) {
			vs = append(vs, damageVariant{fmt.Sprintf("truncated to %d bytes", n), db[:n]})
		}
	}
	for off := 0; off < len(db); off++ {
		if !(off/pageSize < inUse && off%pageSize < head) && off%sparse != 0 {
			continue
		}
		bit := byte(1) << (off % 8)
		d := bytes.Clone(db)
		d[off] ^= bit
		vs = append(vs, damageVariant{fmt.Sprintf("bit 0x%02x flipped at offset %d", bit, off), d})
	}
	return vs
}

// TestDamagedStateFaultInjection truncates and bit-flips copies of a real
// state database and runs every command against each: no command may
// crash or exit with anything but 0 or 1, none may change the file, a
// refusal names the file and the way out, and doctor's state check fails
// exactly when the commands refuse the state as damaged.
func TestDamagedStateFaultInjection(t *testing.T) {
	origDir, db := realState(t)
	sock := filepath.Join(t.TempDir(), "run", "s")
	cmds := damageCommands(t, sock)
	baseline := map[string]string{}
	baseRC := map[string]int{}
	for _, c := range cmds {
		withStdin(t, c.stdin)
		o, e, rc := c.run(origDir)
		baseline[c.name], baseRC[c.name] = o, rc
		if c.name != "delete" && c.name != "reset (answered no)" && rc != 0 {
			t.Fatalf("%s on the intact state: exit %d\n%s%s", c.name, rc, o, e)
		}
	}
	if !strings.Contains(baseline["list"], "alice") || !strings.Contains(baseline["pin status"], "PIN: set") {
		t.Fatalf("the intact state does not list what was stored:\n%s%s", baseline["list"], baseline["pin status"])
	}

	mode := ""
	switch {
	case os.Getenv("TPM_FIDO_FAULT_FULL") != "":
		mode = "full"
	case testing.Short() || raceEnabled:
		mode = "short"
	}
	variants := damageVariants(db, mode)
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := tpmstore.StatePath(dir)
	var refused, same, differed, warned, settings, doctorOnly int
	var differences []string
	for _, v := range variants {
		if err := os.WriteFile(path, v.data, 0o600); err != nil {
			t.Fatal(err)
		}
		if os.Getenv("DAMAGE_TRACE") != "" {
			fmt.Fprintln(os.Stderr, "VARIANT", v.name)
		}
		damagedSeen, doctorFailed := false, false
		for _, c := range cmds {
			withStdin(t, c.stdin)
			o, e, rc := c.run(dir)
			if got, err := os.ReadFile(path); err != nil || !bytes.Equal(got, v.data) {
				// The one write allowed: a daemon that started normally
				// stores its own settings (--max-residents) when the
				// stored ones differ, here because the flip was in them.
				if c.name != "serve" || rc != 0 || damagedSeen {
					t.Fatalf("%s: %s changed the file (%v)", v.name, c.name, err)
				}
				settings++
				if err := os.WriteFile(path, v.data, 0o600); err != nil {
					t.Fatal(err)
				}
			}
			if rc != 0 && rc != 1 {
				t.Fatalf("%s: %s exited %d\n%s%s", v.name, c.name, rc, o, e)
			}
			refusal := strings.Contains(e, "is damaged") || strings.Contains(e, "cannot be used") || strings.Contains(e, "another TPM") ||
				strings.Contains(e, "can no longer be used")
			if c.name == "doctor (state check)" {
				refusal = strings.Contains(o, "FAIL")
			}
			if os.Getenv("DAMAGE_DEBUG") != "" && strings.Contains(v.name, os.Getenv("DAMAGE_DEBUG")) {
				t.Logf("%s: %s: rc %d\n%s%s", v.name, c.name, rc, o, e)
			}
			switch {
			case refusal && c.name == "doctor (state check)":
				doctorFailed = true
				if !strings.Contains(o, dir) || !strings.Contains(o, "tpm-fido reset") {
					t.Errorf("%s: doctor failed the state without naming it or the way out:\n%s", v.name, o)
				}
			case refusal:
				damagedSeen = true
				if !strings.Contains(e+o, path) {
					t.Errorf("%s: %s refused without naming %s:\n%s%s", v.name, c.name, path, o, e)
				}
				if c.name != "reset (answered no)" && !strings.Contains(e+o, "tpm-fido reset") {
					t.Errorf("%s: %s refused without the way out (tpm-fido reset):\n%s%s", v.name, c.name, o, e)
				}
				if c.name != "doctor (state check)" && c.name != "reset (answered no)" && rc != 1 {
					t.Errorf("%s: %s refused with exit %d, want 1", v.name, c.name, rc)
				}
			case rc != baseRC[c.name]:
				t.Errorf("%s: %s exited %d (intact: %d) without saying the state is damaged:\n%s%s", v.name, c.name, rc, baseRC[c.name], o, e)
			case c.name == "reset (answered no)":
				// It asks before it opens anything; damage that only the
				// TPM can see shows after the YES (TestDamagedStateReset).
			default:
				if strings.Contains(o, "WARN") {
					warned++
				}
				if c.name != "doctor (state check)" && o != baseline[c.name] {
					differed++
					differences = append(differences, fmt.Sprintf("%s: %s printed\n%s", v.name, c.name, o))
				} else {
					same++
				}
			}
		}
		// doctor's deep check sees all a command can (and more: key
		// order, the free-page list, every resident record).
		if damagedSeen && !doctorFailed {
			t.Errorf("%s: a command refused the state as damaged but doctor passed it", v.name)
		}
		if damagedSeen {
			refused++
		} else if doctorFailed {
			doctorOnly++
		}
		if strings.HasPrefix(v.name, "truncated") && len(v.data) < 16385 && !damagedSeen {
			t.Errorf("%s: accepted", v.name)
		}
	}
	t.Logf("mode %q: %d damaged copies of a %d-byte state.db, %d commands each: %d copies refused as damaged (exit 1, file and way out named); "+
		"%d more failed only doctor's deep check; of the commands that used a copy, %d outputs identical to the intact state's, %d different; %d doctor warnings, %d serve runs that stored their settings",
		mode, len(variants), len(db), len(cmds), refused, doctorOnly, same, differed, warned, settings)
	for i, d := range differences {
		if i == 5 {
			t.Logf("... %d more", len(differences)-5)
			break
		}
		t.Logf("served different data (a bit flip inside a stored value that nothing checks): %s", d)
	}
}

// TestDamagedStateReset: reset is the way out of every kind of damage;
// it asks first, and removes only what cannot be used.
func TestDamagedStateReset(t *testing.T) {
	_, db := realState(t)
	for _, tc := range []struct {
		name  string
		setup func(dir string) error
	}{
		{"truncated to 16384 bytes", func(dir string) error {
			return os.WriteFile(tpmstore.StatePath(dir), db[:16384], 0o600)
		}},
		{"empty", func(dir string) error { return os.WriteFile(tpmstore.StatePath(dir), nil, 0o600) }},
		{"both header pages flipped", func(dir string) error {
			d := bytes.Clone(db)
			d[16] ^= 1
			d[4096+16] ^= 1
			return os.WriteFile(tpmstore.StatePath(dir), d, 0o600)
		}},
		{"a directory", func(dir string) error { return os.Mkdir(tpmstore.StatePath(dir), 0o700) }},
		{"wrapping-key check altered (only the TPM can tell)", func(dir string) error {
			d := bytes.Clone(db)
			i := bytes.Index(d, []byte("wrap.check"))
			if i < 0 {
				return fmt.Errorf("no wrap.check in the database")
			}
			d[i+len("wrap.check")+3] ^= 0x10 // in a leaf page the value follows its key
			return os.WriteFile(tpmstore.StatePath(dir), d, 0o600)
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "state")
			if err := os.Mkdir(dir, 0o700); err != nil {
				t.Fatal(err)
			}
			if err := tc.setup(dir); err != nil {
				t.Fatal(err)
			}
			sd := "--state-dir=" + dir
			withStdin(t, "\n")
			_, e, rc := runCmd(t, "reset", sd)
			if rc != 1 || !strings.Contains(e, "not confirmed") {
				t.Fatalf("reset without YES: exit %d\n%s", rc, e)
			}
			if _, err := os.Lstat(tpmstore.StatePath(dir)); err != nil {
				t.Fatal("reset removed the state without a YES")
			}
			_, e, rc = runCmd(t, "list", sd)
			if rc != 1 || !strings.Contains(e, tpmstore.StatePath(dir)) || !strings.Contains(e, "tpm-fido reset") {
				t.Errorf("list on it: exit %d\n%s", rc, e)
			}
			withStdin(t, "YES\n")
			o, e, rc := runCmd(t, "reset", sd)
			if rc != 0 || !strings.Contains(e, "Type YES") || !(strings.Contains(o, "removed "+tpmstore.StatePath(dir)) || strings.Contains(o, "stale state was reset")) {
				t.Fatalf("reset with YES: exit %d\n%s%s", rc, o, e)
			}
			t.Logf("reset: %s", strings.TrimSpace(o))
			o, e, rc = runCmd(t, "list", sd)
			if rc != 0 || !strings.Contains(o, "no resident credentials") {
				t.Fatalf("list after reset: exit %d\n%s%s", rc, o, e)
			}
			o, e, rc = runCmd(t, "pin", "status", sd)
			if rc != 0 || !strings.Contains(o, "PIN: not set") {
				t.Fatalf("pin status after reset: exit %d\n%s%s", rc, o, e)
			}
		})
	}
}

// TestStateNotADirectory: a regular file where the state directory
// should be is reported by every command, and reset removes it only
// after a YES.
func TestStateNotADirectory(t *testing.T) {
	withSimulator(t)
	dir := filepath.Join(t.TempDir(), "tpm-fido")
	if err := os.WriteFile(dir, []byte("not a directory"), 0o600); err != nil {
		t.Fatal(err)
	}
	sd := "--state-dir=" + dir
	bogus := base64.RawURLEncoding.EncodeToString([]byte("bogus-id"))
	for _, args := range [][]string{{"list", sd}, {"pin", "status", sd}, {"pin", "set", sd}, {"delete", sd, bogus}, {"serve"}} {
		withStdin(t, "")
		var o, e bytes.Buffer
		var rc int
		if args[0] == "serve" {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			rc = runServeContext(ctx, []string{"--transport", "unix:" + filepath.Join(t.TempDir(), "run", "s"), "--tpm", "simulator",
				"--presence", "always-allow", "--insecure-test-mode", "--state-dir", dir}, &o, &e)
		} else {
			rc = run(args, &o, &e)
		}
		if rc != 1 || !strings.Contains(e.String(), dir+": is not a directory") || !strings.Contains(e.String(), "tpm-fido reset") {
			t.Errorf("%v: exit %d, stdout %q, stderr:\n%s", args, rc, o.String(), e.String())
		}
	}
	c := doctorEnv{tpm: "simulator", stateDir: dir}.checkStateDir()
	if c.status != checkFail || !strings.Contains(c.detail, "is not a directory") || !strings.Contains(c.fix, "tpm-fido reset") {
		t.Errorf("doctor: %+v", c)
	}
	withStdin(t, "no\n")
	if _, e, rc := runCmd(t, "reset", sd); rc != 1 || !strings.Contains(e, "Reset removes "+dir) {
		t.Fatalf("reset answered no: exit %d\n%s", rc, e)
	}
	if b, err := os.ReadFile(dir); err != nil || string(b) != "not a directory" {
		t.Fatal("reset without YES changed the file")
	}
	withStdin(t, "YES\n")
	if o, e, rc := runCmd(t, "reset", sd); rc != 0 || !strings.Contains(o, "removed "+dir) {
		t.Fatalf("reset: exit %d\n%s%s", rc, o, e)
	}
	if o, e, rc := runCmd(t, "pin", "status", sd); rc != 0 || !strings.Contains(o, "PIN: not set") {
		t.Fatalf("pin status after reset: exit %d\n%s%s", rc, o, e)
	}
}

// TestStateUnreadable: a state database this user may not read. Run as
// root, the commands run in a child process as uid 65534 (root reads
// anything).
func TestStateUnreadable(t *testing.T) {
	if os.Getenv("TPM_FIDO_UNREADABLE_CHILD") != "" {
		unreadableChild(t, os.Getenv("TPM_FIDO_UNREADABLE_CHILD"))
		return
	}
	_, db := realState(t)
	base := t.TempDir()
	dir := filepath.Join(base, "state")
	if err := os.Mkdir(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := tpmstore.StatePath(dir)
	if err := os.WriteFile(path, db, 0o600); err != nil {
		t.Fatal(err)
	}
	if os.Geteuid() != 0 {
		if err := os.Chmod(path, 0); err != nil {
			t.Fatal(err)
		}
		unreadableChild(t, dir)
		return
	}
	// The directory is nobody's (they may remove the file); the file
	// stays root's, mode 0600.
	for _, p := range []string{filepath.Dir(base), base} {
		if err := os.Chmod(p, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chown(dir, otheruser.UID, otheruser.UID); err != nil {
		t.Fatal(err)
	}
	out, err := otheruser.Copy(t).Run("TestStateUnreadable", "TPM_FIDO_UNREADABLE_CHILD="+dir)
	t.Logf("as uid 65534:\n%s", out)
	if err != nil || !strings.Contains(string(out), "--- PASS") {
		t.Fatalf("child: %v", err)
	}
	if _, err := os.Stat(path); !os.IsNotExist(err) {
		t.Errorf("the unreadable file is still there after reset: %v", err)
	}
}

func unreadableChild(t *testing.T, dir string) {
	path := tpmstore.StatePath(dir)
	before, _ := os.Lstat(path)
	sd := "--state-dir=" + dir
	for _, args := range [][]string{{"list", sd}, {"pin", "status", sd}, {"delete", sd, "AAAA"}} {
		withStdin(t, "")
		_, e, rc := runCmd(t, args...)
		if rc != 1 || !strings.Contains(e, path+": cannot be read: permission denied") || !strings.Contains(e, "chown") || !strings.Contains(e, "tpm-fido reset") {
			t.Errorf("%v: exit %d\n%s", args, rc, e)
		}
	}
	c := doctorEnv{stateDir: dir}.checkStateDir()
	if c.status != checkFail || !strings.Contains(c.detail, "permission denied") || !strings.Contains(c.fix, "chown") {
		t.Errorf("doctor: %+v", c)
	}
	if after, err := os.Lstat(path); err != nil || after.ModTime() != before.ModTime() || after.Mode() != before.Mode() {
		t.Fatal("the commands touched the unreadable file")
	}
	withStdin(t, "YES\n")
	o, e, rc := runCmd(t, "reset", sd)
	if rc != 0 || !strings.Contains(o, "removed "+path) {
		t.Fatalf("reset: exit %d\n%s%s", rc, o, e)
	}
	t.Logf("reset: %s", strings.TrimSpace(o))
}
