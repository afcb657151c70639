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

// The guest's kernels and udev come from Debian packages that are
// downloaded with apt-get and partly extracted into the cache on first
// use; nothing is installed on the host.

// kernelPackage asks apt which kernel package meta depends on.
func kernelPackage(ctx context.Context, meta string) (string, error) {
	out, err := run(ctx, "", "apt-cache", "depends", meta)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "Depends:" && strings.HasPrefix(f[1], "linux-image-") {
			return f[1], nil
		}
	}
	return "", fmt.Errorf("%w: apt-cache names no kernel for %s (run apt-get update; Debian apt sources are needed)", ErrUnavailable, meta)
}

// fetchKernel returns the kernel package that meta depends on, as load
// reads it from cacheDir/PACKAGE. On first use keep fills that directory
// from the package's .deb (see fillCache).
func fetchKernel[K any](ctx context.Context, cacheDir string, logw io.Writer, meta string,
	load func(pkg, dir string) (K, error), keep func(ctx context.Context, pkg, deb, x, flat string) error) (K, error) {
	pkg, err := kernelPackage(ctx, meta)
	if err != nil {
		var none K
		return none, err
	}
	dir := filepath.Join(cacheDir, pkg)
	if k, err := load(pkg, dir); err == nil {
		return k, nil
	}
	err = fillCache(ctx, cacheDir, dir, logw, pkg, []string{pkg}, func(debs []string, x, flat string) error {
		return keep(ctx, pkg, debs[0], x, flat)
	})
	if err != nil {
		var none K
		return none, err
	}
	return load(pkg, dir)
}

// fillCache fills the cache directory dir from Debian packages: it logs
// that it fetches what, downloads the packages (specs as apt-get download
// takes them: NAME or NAME=VERSION) and calls fill with their .debs, in
// the order of specs, a directory to extract them into (x) and an empty
// one (flat) to leave the files to keep in. flat then replaces dir. Both
// directories are under cacheDir, so that the replacement is a rename,
// and are removed afterwards.
func fillCache(ctx context.Context, cacheDir, dir string, logw io.Writer, what string, specs []string,
	fill func(debs []string, x, flat string) error) error {
	fmt.Fprintf(logw, "e2e: fetching %s into %s\n", what, dir)
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return err
	}
	debs, cleanup, err := downloadDebs(ctx, specs...)
	if err != nil {
		return err
	}
	defer cleanup()
	tmp, err := os.MkdirTemp(cacheDir, ".extract-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	x, flat := filepath.Join(tmp, "x"), filepath.Join(tmp, "flat")
	for _, d := range []string{x, flat} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return err
		}
	}
	if err := fill(debs, x, flat); err != nil {
		return err
	}
	_ = os.RemoveAll(dir)
	return os.Rename(flat, dir)
}

// downloadDebs fetches packages with apt-get download into a temporary
// directory and returns the .debs' paths, in the order of specs, and a
// function that removes them.
func downloadDebs(ctx context.Context, specs ...string) ([]string, func(), error) {
	// apt's sandbox user must be able to write where it downloads.
	dl, err := os.MkdirTemp("", "tpm-fido-deb-")
	if err != nil {
		return nil, nil, err
	}
	cleanup := func() { os.RemoveAll(dl) }
	if err := os.Chmod(dl, 0o777); err != nil {
		cleanup()
		return nil, nil, err
	}
	if _, err := run(ctx, dl, "apt-get", append([]string{"download", "-q"}, specs...)...); err != nil {
		cleanup()
		return nil, nil, fmt.Errorf("%w: %v", ErrUnavailable, err)
	}
	var debs []string
	for _, spec := range specs {
		pkg, _, _ := strings.Cut(spec, "=")
		found, _ := filepath.Glob(filepath.Join(dl, pkg+"_*.deb"))
		if len(found) != 1 {
			cleanup()
			return nil, nil, fmt.Errorf("%w: apt-get download left no %s .deb", ErrUnavailable, pkg)
		}
		debs = append(debs, found[0])
	}
	return debs, cleanup, nil
}

// extractDeb extracts the members matching patterns from a .deb into dir,
// or every member when there are no patterns.
func extractDeb(ctx context.Context, deb, dir string, patterns ...string) error {
	script := `deb=$1 dir=$2; shift 2; dpkg-deb --fsys-tarfile "$deb" | tar -x -C "$dir" --wildcards "$@"`
	cmd := exec.CommandContext(ctx, "sh", append([]string{"-c", script, "sh", deb, dir}, patterns...)...)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("extracting %s from %s: %w: %s", strings.Join(patterns, " "), deb, err, b)
	}
	return nil
}

// vmlinuzPattern is the kernel image in a kernel package.
const vmlinuzPattern = "./boot/vmlinuz-*"

// keepVmlinuz copies the kernel image extracted into x (vmlinuzPattern)
// to flat/vmlinuz.
func keepVmlinuz(pkg, x, flat string) error {
	vmlinuz, _ := filepath.Glob(filepath.Join(x, vmlinuzPattern))
	if len(vmlinuz) != 1 {
		return fmt.Errorf("%s holds no single vmlinuz", pkg)
	}
	return copyFile(vmlinuz[0], filepath.Join(flat, "vmlinuz"), 0o644)
}
