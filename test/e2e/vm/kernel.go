package vm

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
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
	return fetchKernel(ctx, cacheDir, logw, KernelMetaPackage, loadKernel, keepKernel)
}

// keepKernel extracts the kernel image and the Modules from the kernel
// package's .deb into x and leaves them in flat.
func keepKernel(ctx context.Context, pkg, deb, x, flat string) error {
	patterns := []string{vmlinuzPattern}
	for _, m := range Modules {
		patterns = append(patterns, "./lib/modules/*/kernel/drivers/hid/"+m+".ko")
	}
	if err := extractDeb(ctx, deb, x, patterns...); err != nil {
		return err
	}
	if err := keepVmlinuz(pkg, x, flat); err != nil {
		return err
	}
	for _, m := range Modules {
		ko, _ := filepath.Glob(filepath.Join(x, "lib", "modules", "*", "kernel", "drivers", "hid", m+".ko"))
		if len(ko) != 1 {
			return fmt.Errorf("%s holds no %s.ko", pkg, m)
		}
		if err := copyFile(ko[0], filepath.Join(flat, m+".ko"), 0o644); err != nil {
			return err
		}
	}
	return nil
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
