package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpm-fido/tpm-fido/test/e2e/browser"
	"github.com/tpm-fido/tpm-fido/test/e2e/vm"
)

// Environment variables of TestBrowsers.
const (
	// browsersEnv limits the browsers (comma-separated: chromium,firefox).
	browsersEnv = "TPM_FIDO_E2E_BROWSERS"
	// faultEnv breaks the daemon on purpose (browser.FaultDeny or
	// browser.FaultNoHidraw): the test must then fail.
	faultEnv = "TPM_FIDO_E2E_BROWSER_FAULT"
)

// browserPIN is the PIN the flows set through the browsers' own UI.
const browserPIN = "735194"

// TestBrowsers boots the host's own root in a VM (see vm.RootShares) with
// a swtpm TPM and runs WebAuthn flows in Debian's Chromium and Firefox
// against tpm-fido on the guest's /dev/uhid, each ceremony verified by a
// go-webauthn relying party (test/e2e/browser). Each flow is a subtest
// BROWSER/FLOW; the lines under a passing one are what the relying party
// checked.
func TestBrowsers(t *testing.T) {
	if testing.Short() {
		t.Skip("the browser test boots a VM and two browsers; skipped in -short mode")
	}
	tools := lookTools(t)
	isBrowser := map[string]bool{}
	for _, ps := range browser.Programs {
		for _, p := range ps {
			isBrowser[p] = true
		}
	}
	var missing []string
	for _, p := range browser.HostPrograms {
		if isBrowser[p.Name] {
			continue // a missing browser fails or skips only its own flows
		}
		if _, err := exec.LookPath(p.Name); err != nil {
			missing = append(missing, p.Name+" ("+p.Package+")")
		}
	}
	if len(missing) > 0 {
		skipUnlessRequired(t, "the guest's desktop needs host programs that are missing: %s", strings.Join(missing, ", "))
	}
	browsers := []string{"chromium", "firefox"}
	if v := os.Getenv(browsersEnv); v != "" {
		browsers = strings.Split(v, ",")
	}
	var runnable []string
	for _, b := range browsers {
		ok := true
		for _, p := range browser.Programs[b] {
			if _, err := exec.LookPath(p); err != nil {
				ok = false
				for _, fl := range browser.Flows {
					t.Run(b+"/"+fl, func(t *testing.T) { skipUnlessRequired(t, "%s is not installed on the host: %v", p, err) })
				}
			}
		}
		if ok {
			runnable = append(runnable, b)
		}
	}
	if len(runnable) == 0 {
		return
	}

	ctx := vmContext(t)
	start := time.Now()
	kernel := fetch(ctx, t, "the guest kernel", vm.FetchGenericKernel)
	t.Logf("kernel %s with %d modules ready in %s", kernel.Package, len(kernel.Modules), time.Since(start).Round(time.Millisecond))

	root, err := vm.ModuleRoot(ctx, ".")
	if err != nil {
		t.Fatal(err)
	}
	// The work directory is shared with the guest, where the desktop
	// user reads it and writes out/.
	work := t.TempDir()
	out := filepath.Join(work, "out")
	if err := os.Mkdir(out, 0o777); err != nil {
		t.Fatal(err)
	}
	for _, d := range []string{work, out} {
		if err := os.Chmod(d, map[bool]os.FileMode{true: 0o777, false: 0o755}[d == out]); err != nil {
			t.Fatal(err)
		}
	}
	step := time.Now()
	if err := vm.BuildDaemon(ctx, root, filepath.Join(work, "tpm-fido")); err != nil {
		t.Fatal(err)
	}
	if err := vm.BuildStatic(ctx, root, "./test/e2e/cmd/browsers-guest", filepath.Join(work, "browsers-guest")); err != nil {
		t.Fatal(err)
	}
	cfg := browser.Config{Daemon: "/e2e/tpm-fido", Browsers: runnable, Fault: os.Getenv(faultEnv),
		OutDir: "/e2e/out", PIN: browserPIN, Port: 8080}
	cfgJSON, _ := json.Marshal(cfg)
	for name, data := range map[string][]byte{"guest.sh": browser.GuestScript, "config.json": cfgJSON} {
		if err := os.WriteFile(filepath.Join(work, name), data, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	initrd := filepath.Join(work, "initrd.cpio.zst")
	if err := vm.BuildRootShareInitramfs(ctx, tools, kernel, initrd); err != nil {
		t.Fatal(err)
	}
	t.Logf("daemon, guest driver and initramfs built in %s", time.Since(step).Round(time.Millisecond))
	if cfg.Fault != "" {
		t.Logf("%s=%s: the daemon is broken on purpose; the flows must fail", faultEnv, cfg.Fault)
	}

	log, rep := boot(ctx, t, vm.BootConfig{
		Tools: tools, Vmlinuz: kernel.Vmlinuz, Initrd: initrd,
		TPMDir: filepath.Join(work, "tpm"), Phase: "browsers",
		MemoryMB: 3072, Shares: vm.RootShares(work),
		Timeout: 12 * time.Minute,
	}, 60)
	keepOut(t, out)
	for _, b := range runnable {
		for _, fl := range browser.Flows {
			t.Run(b+"/"+fl, func(t *testing.T) { guestVerdict(t, rep, "flow", b+"-"+fl, true) })
		}
	}
	var timeline []string
	for _, l := range strings.Split(strings.ReplaceAll(string(log), "\r", ""), "\n") {
		if i := strings.Index(l, "E2E-INFO "); i >= 0 {
			timeline = append(timeline, l[i+len("E2E-INFO "):])
		}
	}
	t.Logf("guest timeline:\n%s", strings.Join(timeline, "\n"))
	t.Logf("browser stage took %s in all", time.Since(start).Round(time.Millisecond))
}

// keepOut copies the guest's logs and screenshots to
// $TPM_FIDO_E2E_LOGDIR/browsers when that is set.
func keepOut(t *testing.T, out string) {
	dir := os.Getenv("TPM_FIDO_E2E_LOGDIR")
	if dir == "" {
		return
	}
	dst := filepath.Join(dir, "browsers")
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Log(err)
		return
	}
	entries, _ := os.ReadDir(out)
	for _, e := range entries {
		b, err := os.ReadFile(filepath.Join(out, e.Name()))
		if err == nil {
			err = os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644)
		}
		if err != nil {
			t.Log(err)
		}
	}
	t.Logf("guest logs and screenshots kept in %s", dst)
}
