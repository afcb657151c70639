package main

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/relay"
	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// TestDoctorThisMachine runs doctor with the real paths. On a machine
// without uhid and without a TPM it must name both, with their fixes, and
// fail.
func TestDoctorThisMachine(t *testing.T) {
	if exists("/dev/uhid") || exists("/dev/tpmrm0") {
		t.Skip("this machine has /dev/uhid or /dev/tpmrm0")
	}
	t.Setenv("XDG_DATA_HOME", t.TempDir())
	out, _, rc := runCmd(t, "doctor")
	if rc == 0 {
		t.Errorf("doctor exited 0 without uhid and TPM:\n%s", out)
	}
	for _, want := range []string{
		"FAIL  uhid:", "/dev/uhid does not exist", "sudo modprobe uhid",
		"FAIL  tpm:", "no TPM at /dev/tpmrm0", "enable the TPM",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("doctor output lacks %q:\n%s", want, out)
		}
	}
}

// fakeSys builds a sysfs/udev tree with our key as hidraw0.
func fakeSys(t *testing.T, udevRecord string) doctorEnv {
	t.Helper()
	root := t.TempDir()
	mk := func(p, content string) {
		p = filepath.Join(root, p)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	mk("sys/class/hidraw/hidraw3/device/uevent", "DRIVER=hid-generic\nHID_ID=0003:00001209:0000F1D0\nHID_NAME=tpm-fido\nHID_UNIQ=tpm-fido\n")
	mk("sys/class/hidraw/hidraw3/dev", "243:3\n")
	mk("sys/class/hidraw/hidraw0/device/uevent", "HID_NAME=Some Mouse\n")
	mk("dev/hidraw3", "")
	if udevRecord != "" {
		mk("run/udev/data/c243:3", udevRecord)
	}
	state := filepath.Join(root, "state")
	if err := os.Mkdir(state, 0o700); err != nil {
		t.Fatal(err)
	}
	return doctorEnv{
		uhid:      "/dev/null", // a character device anyone can write
		sysModule: filepath.Join(root, "sys/module/uhid"),
		hidraw:    filepath.Join(root, "sys/class/hidraw"),
		udevData:  filepath.Join(root, "run/udev/data"),
		dev:       filepath.Join(root, "dev"),
		tpm:       filepath.Join(root, "no-tpm"),
		stateDir:  state,
	}
}

func findCheck(cs []check, what string) check {
	for _, c := range cs {
		if c.what == what && c.status != checkOK {
			return c
		}
	}
	for _, c := range cs {
		if c.what == what {
			return c
		}
	}
	return check{what: "missing " + what, status: checkFail}
}

func TestDoctorDeviceAndState(t *testing.T) {
	env := fakeSys(t, "I:1\nE:ID_SECURITY_TOKEN=1\nG:uaccess\nQ:uaccess\n")
	if c := findCheck(env.checkUHID(), "uhid"); c.status != checkWarn || !strings.Contains(c.detail, "every local user") {
		t.Errorf("a 0666 uhid node: %+v, want a warning about world access", c)
	}
	if c := env.checkDevice(); c.status != checkOK || !strings.Contains(c.detail, "hidraw3") {
		t.Errorf("tagged device: %+v", c)
	}
	if c := env.checkStateDir(); c.status != checkOK {
		t.Errorf("0700 state dir: %+v", c)
	}
	if err := os.Chmod(env.stateDir, 0o755); err != nil {
		t.Fatal(err)
	}
	if c := env.checkStateDir(); c.status != checkFail || !strings.Contains(c.fix, "chmod 700") {
		t.Errorf("0755 state dir: %+v", c)
	}
	if c := findCheck(env.checkTPM(), "tpm"); c.status != checkFail || !strings.Contains(c.detail, "no TPM at") {
		t.Errorf("missing TPM: %+v", c)
	}

	env = fakeSys(t, "I:1\nE:ID_SECURITY_TOKEN=1\n")
	if c := env.checkDevice(); c.status != checkFail || !strings.Contains(c.fix, "tpm-fido setup") {
		t.Errorf("device without uaccess: %+v", c)
	}
	env.hidraw = filepath.Join(t.TempDir(), "empty")
	if c := env.checkDevice(); c.status != checkWarn || !strings.Contains(c.fix, "systemctl --user start tpm-fido") {
		t.Errorf("no device: %+v", c)
	}
}

func TestPrintChecksExit(t *testing.T) {
	var sb strings.Builder
	if rc := printChecks(&sb, []check{{checkOK, "a", "fine", ""}, {checkWarn, "b", "hmm", "do x"}}); rc != 0 {
		t.Errorf("warnings only: rc %d", rc)
	}
	sb.Reset()
	if rc := printChecks(&sb, []check{{checkOK, "a", "fine", ""}, {checkFail, "b", "broken", "do x\ndo y"}}); rc != 1 {
		t.Errorf("a failure: rc %d", rc)
	}
	if !strings.Contains(sb.String(), "fix:     do x") || !strings.Contains(sb.String(), "do y") {
		t.Errorf("fix not printed:\n%s", sb.String())
	}
}

// TestDoctorOlderState: a state written by the first layout (29 resident
// credentials over 5 RPs, tpmstore's test fixture) is counted without the
// TPM and reported as one the daemon will upgrade; nothing is written.
func TestDoctorOlderState(t *testing.T) {
	dir := t.TempDir()
	b, err := os.ReadFile("../../tpmstore/testdata/state-v1.db")
	if err != nil {
		t.Fatal(err)
	}
	path := tpmstore.StatePath(dir)
	if err := os.WriteFile(path, b, 0o600); err != nil {
		t.Fatal(err)
	}
	c := doctorEnv{stateDir: dir}.checkResidents()
	if c.status != checkOK || !strings.HasPrefix(c.detail, "29 of 10000 resident credentials used, 5 relying parties") || !strings.Contains(c.detail, "upgrades it") {
		t.Errorf("doctor on a version-1 state: %+v", c)
	}
	if after, _ := os.ReadFile(path); !bytes.Equal(after, b) {
		t.Error("doctor changed the state file")
	}
}

// TestDoctorRelay: doctor asks the relay whether it serves this user,
// without making a device, and names the fix for each answer.
func TestDoctorRelay(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "relay.sock")
	env := doctorEnv{relaySock: sock}
	if c := env.checkRelay(); c.status != checkFail || !strings.Contains(c.detail, "not running") || !strings.Contains(c.fix, "systemctl enable --now tpm-fido-relay.service") {
		t.Errorf("no relay: %+v", c)
	}
	users := filepath.Join(dir, "relay-users")
	os.WriteFile(users, []byte(fmt.Sprintf("%d\n", os.Getuid()+1)), 0o644)
	opened := 0
	srv, err := relay.Listen(relay.Config{Socket: sock, UsersFile: users, OpenDevice: func() (relay.Device, error) {
		opened++
		return nil, errors.New("no device in this test")
	}})
	if err != nil {
		t.Fatal(err)
	}
	defer ctaphidtest.Serve(t, srv)()
	if c := env.checkRelay(); c.status != checkFail || !strings.Contains(c.detail, "may not use the relay") || !strings.Contains(c.fix, "--allow-user") {
		t.Errorf("not allowed: %+v", c)
	}
	os.WriteFile(users, []byte(fmt.Sprintf("%d\n", os.Getuid())), 0o644)
	if c := env.checkRelay(); c.status != checkOK || !strings.Contains(c.detail, "is allowed") {
		t.Errorf("allowed: %+v", c)
	}
	if opened != 0 {
		t.Errorf("doctor made the relay create %d device(s)", opened)
	}
}
