package vm

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// KernelMetaPackage is the Debian package whose dependency names the cloud
// kernel to use. Its ABI number changes with Debian updates, so it is
// looked up at run time.
const KernelMetaPackage = "linux-image-cloud-amd64"

// Modules are the kernel modules the guest loads, in load order: hid.ko
// (which includes hidraw), uhid.ko, and hid-generic.ko (without which no
// /dev/hidraw node appears).
var Modules = []string{"hid", "uhid", "hid-generic"}

// Kernel is an extracted kernel: the image and the Modules, by name.
type Kernel struct {
	Package string
	Vmlinuz string
	Modules map[string]string
}

// DefaultCacheDir is $TPM_FIDO_E2E_CACHE, else $XDG_CACHE_HOME/tpm-fido-e2e
// (~/.cache/tpm-fido-e2e), else a directory under the system temp dir.
func DefaultCacheDir() string {
	if d := os.Getenv("TPM_FIDO_E2E_CACHE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "tpm-fido-e2e")
	}
	return filepath.Join(os.TempDir(), "tpm-fido-e2e-cache")
}

// FetchKernel returns the cloud kernel and its HID modules, downloading the
// .deb with apt-get and extracting only those files into
// cacheDir/PACKAGE on first use. Nothing is installed on the host. Progress
// goes to logw. Errors that mean the kernel cannot be had wrap
// ErrUnavailable.
func FetchKernel(ctx context.Context, cacheDir string, logw io.Writer) (*Kernel, error) {
	out, err := run(ctx, "", "apt-cache", "depends", KernelMetaPackage)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	pkg := ""
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			pkg = f[1]
			break
		}
	}
	if pkg == "" {
		return nil, fmt.Errorf("%w: apt-cache names no kernel for %s (run apt-get update; Debian apt sources are needed)", ErrUnavailable, KernelMetaPackage)
	}
	dir := filepath.Join(cacheDir, pkg)
	if k, err := loadKernel(pkg, dir); err == nil {
		return k, nil
	}
	fmt.Fprintf(logw, "e2e: fetching %s into %s\n", pkg, dir)
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, err
	}
	// apt's sandbox user must be able to write where it downloads.
	dl, err := os.MkdirTemp("", "tpm-fido-kernel-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(dl)
	if err := os.Chmod(dl, 0o777); err != nil {
		return nil, err
	}
	if _, err := run(ctx, dl, "apt-get", "download", "-q", pkg); err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	debs, _ := filepath.Glob(filepath.Join(dl, pkg+"_*.deb"))
	if len(debs) != 1 {
		return nil, fmt.Errorf("%w: apt-get download left no %s .deb", ErrUnavailable, pkg)
	}
	tmp, err := os.MkdirTemp(cacheDir, ".extract-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	patterns := []string{"./boot/vmlinuz-*"}
	for _, m := range Modules {
		patterns = append(patterns, "./lib/modules/*/kernel/drivers/hid/"+m+".ko")
	}
	script := `dpkg-deb --fsys-tarfile "$1" | tar -x -C "$2" --wildcards "$3" "$4" "$5" "$6"`
	cmd := exec.CommandContext(ctx, "sh", append([]string{"-c", script, "sh", debs[0], tmp}, patterns...)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("extracting %s: %w: %s", debs[0], err, b)
	}
	flat := filepath.Join(tmp, "flat")
	if err := os.Mkdir(flat, 0o755); err != nil {
		return nil, err
	}
	vmlinuz, _ := filepath.Glob(filepath.Join(tmp, "boot", "vmlinuz-*"))
	if len(vmlinuz) != 1 {
		return nil, fmt.Errorf("%s holds no single vmlinuz", pkg)
	}
	if err := copyFile(vmlinuz[0], filepath.Join(flat, "vmlinuz"), 0o644); err != nil {
		return nil, err
	}
	for _, m := range Modules {
		ko, _ := filepath.Glob(filepath.Join(tmp, "lib", "modules", "*", "kernel", "drivers", "hid", m+".ko"))
		if len(ko) != 1 {
			return nil, fmt.Errorf("%s holds no %s.ko", pkg, m)
		}
		if err := copyFile(ko[0], filepath.Join(flat, m+".ko"), 0o644); err != nil {
			return nil, err
		}
	}
	_ = os.RemoveAll(dir)
	if err := os.Rename(flat, dir); err != nil {
		return nil, err
	}
	return loadKernel(pkg, dir)
}

func loadKernel(pkg, dir string) (*Kernel, error) {
	k := &Kernel{Package: pkg, Vmlinuz: filepath.Join(dir, "vmlinuz"), Modules: map[string]string{}}
	if _, err := os.Stat(k.Vmlinuz); err != nil {
		return nil, err
	}
	for _, m := range Modules {
		p := filepath.Join(dir, m+".ko")
		if _, err := os.Stat(p); err != nil {
			return nil, err
		}
		k.Modules[m] = p
	}
	return k, nil
}
