package e2e

import (
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tpm-fido/tpm-fido/test/e2e/vm"
)

// phases are the boots of TestVM, in order, with the scenarios each must
// report. A scenario missing from the console log fails.
var phases = []struct {
	name      string
	tpm       string // swtpm state directory; a new name is a cleared TPM
	scenarios []string
}{
	{"1", "tpm-a", []string{
		// least privilege: the user set up per the README cannot open
		// /dev/uhid; every scenario below runs through the relay
		"user-no-uhid",
		// issue 2
		"token-list", "token-info",
		// issue 4
		"info-options", "cred-assert",
		// issue 6 scenarios 1, 7, 6, 2, 3, 4, 5, 10
		"ssh-basic", "ed25519-rejected", "write-attestation", "pin-set", "resident",
		"verify-required", "no-touch", "application", "parallel", "counter-before",
	}},
	// issue 6 scenario 8: same TPM, same state disk.
	// issue 11: a PIN change keeps verify-required keys working; the
	// TPM never reaches lockout.
	{"2", "tpm-a", []string{"reboot-daemon", "reboot-login", "reboot-counter", "reboot-resident-list", "pin-change-uv"}},
	// issue 6 scenario 9: a cleared TPM with the old state disk; then
	// the README's install: setup, sysusers, udevd with the installed
	// rules, the relay as its system user, a non-root daemon through it,
	// ssh-keygen, doctor.
	{"3", "tpm-b", []string{"other-tpm",
		"udev-setup", "user-daemon", "udev-hidraw", "fido-id", "user-ssh-keygen", "doctor"}},
}

func TestVM(t *testing.T) {
	if testing.Short() {
		t.Skip("the VM test boots qemu three times; skipped in -short mode")
	}
	tools := lookTools(t)
	ctx := vmContext(t)
	start := time.Now()
	kernel := fetch(ctx, t, "the guest kernel", vm.FetchKernel)
	t.Logf("kernel %s ready in %s", kernel.Package, time.Since(start).Round(time.Millisecond))
	udev := fetch(ctx, t, "udev for the guest", vm.FetchUdev)
	t.Logf("udev %s ready", udev.Version)

	root, err := vm.ModuleRoot(ctx, ".")
	if err != nil {
		t.Fatal(err)
	}
	work := t.TempDir()
	step := time.Now()
	daemon := filepath.Join(work, "tpm-fido")
	if err := vm.BuildDaemon(ctx, root, daemon); err != nil {
		t.Fatal(err)
	}
	initrd := filepath.Join(work, "initrd.cpio.zst")
	if err := vm.BuildInitramfs(ctx, vm.InitramfsConfig{Tools: tools, Kernel: kernel, Daemon: daemon, Out: initrd, Udev: udev}); err != nil {
		t.Fatal(err)
	}
	disk := filepath.Join(work, "state.img")
	if err := vm.NewStateDisk(ctx, tools, disk, 32); err != nil {
		t.Fatal(err)
	}
	if fi, err := os.Stat(initrd); err == nil {
		t.Logf("daemon + initramfs (%.1f MB) built in %s", float64(fi.Size())/1e6, time.Since(step).Round(time.Millisecond))
	}

	var attestation *vm.Report
	for _, ph := range phases {
		t.Run("boot"+ph.name, func(t *testing.T) {
			_, rep := boot(ctx, t, vm.BootConfig{
				Tools: tools, Kernel: kernel, Initrd: initrd,
				TPMDir: filepath.Join(work, ph.tpm), StateDisk: disk,
				Phase: ph.name, Timeout: 4 * time.Minute,
			}, 120)
			for _, name := range ph.scenarios {
				t.Run(name, func(t *testing.T) { guestVerdict(t, rep, "scenario", name, false) })
			}
			if ph.name == "1" {
				attestation = rep
				t.Run("write-attestation-verify", func(t *testing.T) {
					verifyAttestation(t, attestation)
				})
			}
		})
	}
	t.Logf("VM stage took %s in all", time.Since(start).Round(time.Millisecond))
}

func verifyAttestation(t *testing.T, rep *vm.Report) {
	att, chal, pub := rep.Files["attestation"], rep.Files["challenge"], rep.Files["attestation-pub"]
	if att == nil || chal == nil || pub == nil {
		t.Fatal("the guest copied out no attestation file, challenge or public key")
	}
	if err := vm.VerifySSHAttestation(att, chal, string(pub)); err != nil {
		t.Fatal(err)
	}
}
