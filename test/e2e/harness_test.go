package e2e

import (
	"context"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpm-fido/tpm-fido/test/e2e/vm"
)

// What TestVM and TestBrowsers share: finding the host programs, the
// context of the VM stage, fetching the guest's parts, booting, and
// turning the guest's markers into subtests.

// skipUnlessRequired skips the test, or fails it when $TPM_FIDO_E2E is
// "require" (as `make e2e` sets it): there a VM test that cannot run is a
// missing package, not a machine without the means.
func skipUnlessRequired(t *testing.T, format string, args ...any) {
	t.Helper()
	if os.Getenv("TPM_FIDO_E2E") == "require" {
		t.Fatalf(format+" (TPM_FIDO_E2E=require)", args...)
	}
	t.Skipf(format, args...)
}

// lookTools returns the host programs the VM needs; without one the test
// skips (see skipUnlessRequired).
func lookTools(t *testing.T) vm.Tools {
	t.Helper()
	tools, err := vm.LookTools()
	if errors.Is(err, vm.ErrUnavailable) {
		skipUnlessRequired(t, "cannot run the VM here: %v", err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return tools
}

// vmContext ends 10 s before the test's deadline, so that a boot that
// runs late still leaves the test the time to report it.
func vmContext(t *testing.T) context.Context {
	d, ok := t.Deadline()
	if !ok {
		return context.Background()
	}
	ctx, cancel := context.WithDeadline(context.Background(), d.Add(-10*time.Second))
	t.Cleanup(cancel)
	return ctx
}

// fetch gets a part of the guest with one of the vm.Fetch functions, into
// the default cache, with its progress in the test's log. When the part
// cannot be had here the test skips (see skipUnlessRequired); what names
// the part in that message.
func fetch[T any](ctx context.Context, t *testing.T, what string, f func(context.Context, string, io.Writer) (T, error)) T {
	t.Helper()
	part, err := f(ctx, vm.DefaultCacheDir(), testWriter{t})
	if errors.Is(err, vm.ErrUnavailable) {
		skipUnlessRequired(t, "cannot get %s: %v", what, err)
	}
	if err != nil {
		t.Fatal(err)
	}
	return part
}

// boot boots the guest for cfg.Phase, logs how long that took, keeps the
// console log (saveLog) and returns it with the markers read from it. A
// failed boot fails the test, which then ends with the last tail lines
// of the console.
func boot(ctx context.Context, t *testing.T, cfg vm.BootConfig, tail int) ([]byte, *vm.Report) {
	t.Helper()
	step := time.Now()
	log, err := vm.Boot(ctx, cfg)
	t.Logf("boot %s took %s", cfg.Phase, time.Since(step).Round(time.Millisecond))
	saveLog(t, cfg.Phase, log)
	if err != nil {
		t.Errorf("boot %s: %v", cfg.Phase, err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			t.Logf("guest console (last %d lines):\n%s", tail, vm.Trim(log, tail))
		}
	})
	return log, vm.Parse(log)
}

// guestVerdict makes what the guest reported for name (a kind: scenario
// or flow) the verdict of the subtest t, with the guest's detail and the
// log lines it printed for it: nothing reported and FAIL fail t, PASS
// passes it, SKIP skips it where skipOK and fails it elsewhere.
func guestVerdict(t *testing.T, rep *vm.Report, kind, name string, skipOK bool) {
	t.Helper()
	res, ok := rep.Results[name]
	switch {
	case !ok:
		t.Fatalf("%s %s reported nothing on the guest console", kind, name)
	case res.Skip && skipOK:
		t.Skipf("guest: %s", res.Detail)
	case !res.Pass:
		t.Errorf("guest: %s", res.Detail)
	default:
		t.Logf("guest: %s", res.Detail)
	}
	for _, l := range res.Log {
		t.Log(strings.TrimPrefix(l, name+": "))
	}
}

// saveLog keeps the console log in $TPM_FIDO_E2E_LOGDIR when set.
func saveLog(t *testing.T, phase string, log []byte) {
	dir := os.Getenv("TPM_FIDO_E2E_LOGDIR")
	if dir == "" {
		return
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Log(err)
		return
	}
	p := filepath.Join(dir, "boot"+phase+".log")
	if err := os.WriteFile(p, log, 0o644); err != nil {
		t.Log(err)
	}
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}
