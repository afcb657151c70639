package vm

import (
	"bytes"
	"context"
	"debug/elf"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

// GenericKernelMetaPackage is the Debian package whose dependency names the
// generic kernel. Unlike the cloud kernel it has 9p and overlayfs (as
// modules), which the browser guest needs to boot into the host's root.
const GenericKernelMetaPackage = "linux-image-amd64"

// RootShareModules are the modules the browser guest loads before it can
// mount the host's root over virtio-9p with a tmpfs overlay, then the HID
// modules. Their dependencies are found in each module's .modinfo and
// loaded first.
var RootShareModules = []string{"virtio_pci", "9pnet_virtio", "9p", "overlay", "hid", "uhid", "hid-generic"}

// ModuleKernel is an extracted kernel with a set of modules in load order
// (every module after the ones it depends on).
type ModuleKernel struct {
	Package string
	Vmlinuz string
	Modules []string // paths of the .ko files, in load order
}

// FetchGenericKernel returns Debian's generic kernel and RootShareModules
// with their dependencies, downloading the .deb with apt-get and
// extracting only those files into cacheDir/PACKAGE on first use. Nothing
// is installed on the host. Errors that mean the kernel cannot be had wrap
// ErrUnavailable.
func FetchGenericKernel(ctx context.Context, cacheDir string, logw io.Writer) (*ModuleKernel, error) {
	return fetchKernel(ctx, cacheDir, logw, GenericKernelMetaPackage, loadModuleKernel, keepModuleKernel)
}

// keepModuleKernel extracts the kernel image and RootShareModules with
// what they depend on from the kernel package's .deb into x, and leaves
// them in flat with modules.order, the modules in load order.
func keepModuleKernel(ctx context.Context, pkg, deb, x, flat string) error {
	// Where every module of the package lives, by module name.
	out, err := run(ctx, "", "dpkg-deb", "-c", deb)
	if err != nil {
		return err
	}
	where := map[string]string{}
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		p := f[len(f)-1]
		if strings.HasPrefix(p, "./lib/modules/") && strings.HasSuffix(p, ".ko") {
			where[modName(path.Base(p))] = p
		}
	}

	if err := extractDeb(ctx, deb, x, vmlinuzPattern); err != nil {
		return err
	}
	// Extract the wanted modules, read what they depend on, extract those,
	// until nothing is missing.
	deps := map[string][]string{}
	want := append([]string(nil), RootShareModules...)
	for len(want) > 0 {
		var paths []string
		for _, m := range want {
			p, ok := where[modName(m)]
			if !ok {
				return fmt.Errorf("%s has no module %s", pkg, m)
			}
			paths = append(paths, p)
		}
		if err := extractDeb(ctx, deb, x, paths...); err != nil {
			return err
		}
		var next []string
		for _, m := range want {
			d, err := moduleDepends(filepath.Join(x, where[modName(m)]))
			if err != nil {
				return err
			}
			deps[modName(m)] = d
			for _, dep := range d {
				if _, seen := deps[dep]; !seen && !slices.Contains(next, dep) {
					next = append(next, dep)
				}
			}
		}
		want = next
	}
	order, err := loadOrder(deps)
	if err != nil {
		return err
	}

	if err := keepVmlinuz(pkg, x, flat); err != nil {
		return err
	}
	var list bytes.Buffer
	for _, m := range order {
		if err := copyFile(filepath.Join(x, where[m]), filepath.Join(flat, m+".ko"), 0o644); err != nil {
			return err
		}
		fmt.Fprintln(&list, m)
	}
	return os.WriteFile(filepath.Join(flat, "modules.order"), list.Bytes(), 0o644)
}

func loadModuleKernel(pkg, dir string) (*ModuleKernel, error) {
	k := &ModuleKernel{Package: pkg, Vmlinuz: filepath.Join(dir, "vmlinuz")}
	if _, err := os.Stat(k.Vmlinuz); err != nil {
		return nil, err
	}
	b, err := os.ReadFile(filepath.Join(dir, "modules.order"))
	if err != nil {
		return nil, err
	}
	for _, m := range strings.Fields(string(b)) {
		p := filepath.Join(dir, m+".ko")
		if _, err := os.Stat(p); err != nil {
			return nil, err
		}
		k.Modules = append(k.Modules, p)
	}
	for _, m := range RootShareModules {
		if !slices.Contains(k.Modules, filepath.Join(dir, modName(m)+".ko")) {
			return nil, fmt.Errorf("cached kernel %s lacks %s", dir, m)
		}
	}
	return k, nil
}

// modName is a module's name as the kernel spells it in depends= lists:
// without .ko, with '_' for '-'.
func modName(s string) string {
	return strings.ReplaceAll(strings.TrimSuffix(s, ".ko"), "-", "_")
}

// moduleDepends reads the depends= entry of a module's .modinfo section.
func moduleDepends(ko string) ([]string, error) {
	f, err := elf.Open(ko)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, fmt.Errorf("%s has no .modinfo section", ko)
	}
	data, err := sec.Data()
	if err != nil {
		return nil, err
	}
	for _, kv := range bytes.Split(data, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte("depends=")); ok {
			var deps []string
			for _, d := range strings.Split(string(v), ",") {
				if d != "" {
					deps = append(deps, modName(d))
				}
			}
			return deps, nil
		}
	}
	return nil, nil
}

// loadOrder sorts modules so that each comes after its dependencies
// (ties by name, for a stable order).
func loadOrder(deps map[string][]string) ([]string, error) {
	names := make([]string, 0, len(deps))
	for m := range deps {
		names = append(names, m)
	}
	sort.Strings(names)
	var order []string
	state := map[string]int{} // 1 visiting, 2 done
	var visit func(string) error
	visit = func(m string) error {
		switch state[m] {
		case 1:
			return fmt.Errorf("module dependency cycle at %s", m)
		case 2:
			return nil
		}
		state[m] = 1
		for _, d := range deps[m] {
			if _, ok := deps[d]; !ok {
				return fmt.Errorf("module %s needs %s, which was not extracted", m, d)
			}
			if err := visit(d); err != nil {
				return err
			}
		}
		state[m] = 2
		order = append(order, m)
		return nil
	}
	for _, m := range names {
		if err := visit(m); err != nil {
			return nil, err
		}
	}
	return order, nil
}
