// Command demo boots the end-to-end VM once and shows on the terminal what
// a user sees: the virtual key listed by fido2-token, `ssh-keygen -t
// ecdsa-sk`, an ssh login with it, and a resident key recovered with
// `ssh-keygen -K`. It needs no uhid and no TPM on the host.
package main

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/tpm-fido/tpm-fido/test/e2e/vm"
)

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	fs := flag.NewFlagSet("demo", flag.ContinueOnError)
	fs.SetOutput(stderr)
	cacheDir := fs.String("cache", vm.DefaultCacheDir(), "where the extracted guest kernel is kept")
	raw := fs.Bool("raw", false, "show the whole serial console, kernel messages and markers included")
	phase := fs.String("phase", "demo", "the guest script to run (test/e2e/vm/guest/phase-NAME.sh); for debugging the harness")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// Ctrl-C and SIGTERM alike stop the VM and remove the temporary files.
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()

	tools, err := vm.LookTools()
	if err != nil {
		fmt.Fprintln(stderr, "demo:", err)
		if errors.Is(err, vm.ErrUnavailable) {
			fmt.Fprintln(stderr, "demo: `make demo` installs these (scripts/packages.txt)")
		}
		return 1
	}
	work, err := os.MkdirTemp("", "tpm-fido-demo-")
	if err != nil {
		fmt.Fprintln(stderr, "demo:", err)
		return 1
	}
	defer os.RemoveAll(work)
	start := time.Now()
	say := func(format string, a ...any) { fmt.Fprintf(stdout, "demo: "+format+"\n", a...) }
	say("getting the Debian cloud kernel (cached in %s)", *cacheDir)
	kernel, err := vm.FetchKernel(ctx, *cacheDir, stdout)
	if err != nil {
		fmt.Fprintln(stderr, "demo:", err)
		return 1
	}
	root, err := vm.ModuleRoot(ctx, ".")
	if err != nil {
		fmt.Fprintln(stderr, "demo:", err)
		return 1
	}
	say("building tpm-fido (static) and the guest initramfs")
	daemon := filepath.Join(work, "tpm-fido")
	initrd := filepath.Join(work, "initrd.cpio.zst")
	disk := filepath.Join(work, "state.img")
	if err := vm.BuildDaemon(ctx, root, daemon); err != nil {
		fmt.Fprintln(stderr, "demo:", err)
		return 1
	}
	if err := vm.BuildInitramfs(ctx, vm.InitramfsConfig{Tools: tools, Kernel: kernel, Daemon: daemon, Out: initrd}); err != nil {
		fmt.Fprintln(stderr, "demo:", err)
		return 1
	}
	if err := vm.NewStateDisk(ctx, tools, disk, 32); err != nil {
		fmt.Fprintln(stderr, "demo:", err)
		return 1
	}
	say("booting %s under qemu (software emulation) with a swtpm TPM", kernel.Package)
	var console io.Writer = &lineFilter{w: stdout}
	if *raw {
		console = stdout
	}
	log, err := vm.Boot(ctx, vm.BootConfig{
		Tools: tools, Kernel: kernel, Initrd: initrd,
		TPMDir: filepath.Join(work, "tpm"), StateDisk: disk,
		Phase: *phase, Timeout: 3 * time.Minute, Console: console,
	})
	if err != nil {
		fmt.Fprintln(stderr, "demo:", err)
		return 1
	}
	res, ok := vm.Parse(log).Results[*phase]
	if !ok || !res.Pass {
		say("FAILED after %s (run with -raw to see the whole console)", time.Since(start).Round(time.Second))
		return 1
	}
	say("done in %s", time.Since(start).Round(time.Second))
	return 0
}

// lineFilter passes the guest's own output and drops kernel messages and
// the harness markers.
type lineFilter struct {
	w   io.Writer
	buf []byte
}

func (f *lineFilter) Write(p []byte) (int, error) {
	f.buf = append(f.buf, p...)
	for {
		i := bytes.IndexByte(f.buf, '\n')
		if i < 0 {
			return len(p), nil
		}
		line := strings.TrimRight(string(f.buf[:i]), "\r")
		f.buf = f.buf[i+1:]
		if strings.HasPrefix(line, "[") || strings.HasPrefix(line, "E2E-") {
			continue
		}
		if _, err := fmt.Fprintln(f.w, line); err != nil {
			return len(p), err
		}
	}
}
