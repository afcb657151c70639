package vm

import (
	"context"
	_ "embed"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// A root-share guest boots Debian's generic kernel into the host's own
// root file system: the host's / is shared read-only over virtio-9p and
// mounted under a tmpfs overlay, so every program installed on the host
// (browsers, Xvfb, dbus, udev) runs in the guest unchanged and nothing the
// guest writes reaches the host, except in the work directory, which is
// shared read-write and mounted on /e2e. The guest's PID 1 (rootshare/init,
// in a small initramfs with busybox and the modules) switches into that
// root and runs /e2e/guest.sh.

//go:embed rootshare/init
var rootShareInit []byte

// Tags of the two 9p shares rootshare/init mounts.
const (
	HostRootTag = "hostroot"
	WorkTag     = "e2ework"
)

// RootShares returns the shares a root-share guest needs: the host's / and
// the work directory (guest.sh and whatever else the guest reads or
// writes).
func RootShares(workDir string) []Share {
	return []Share{{Tag: HostRootTag, Path: "/", ReadOnly: true}, {Tag: WorkTag, Path: workDir}}
}

// BuildRootShareInitramfs packs busybox, the kernel's modules in load
// order and rootshare/init into out (cpio, zstd).
func BuildRootShareInitramfs(ctx context.Context, tools Tools, k *ModuleKernel, out string) error {
	stage, err := os.MkdirTemp("", "tpm-fido-rootshare-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	if err := os.Chmod(stage, 0o755); err != nil {
		return err
	}
	if err := copyFile(tools["busybox"], filepath.Join(stage, "bin", "busybox"), 0o755); err != nil {
		return err
	}
	var order []string
	for _, ko := range k.Modules {
		name := strings.TrimSuffix(filepath.Base(ko), ".ko")
		if err := copyFile(ko, filepath.Join(stage, "modules", name+".ko"), 0o644); err != nil {
			return err
		}
		order = append(order, name)
	}
	if err := os.WriteFile(filepath.Join(stage, "modules", "order"), []byte(strings.Join(order, "\n")+"\n"), 0o644); err != nil {
		return err
	}
	if err := os.WriteFile(filepath.Join(stage, "init"), rootShareInit, 0o755); err != nil {
		return err
	}
	script := `set -e; cd "$1"; find . | "$2" cpio -o -H newc -R 0:0 2>/dev/null | "$3" -3 -q -T0 >"$4"`
	cmd := exec.CommandContext(ctx, "sh", "-c", script, "sh", stage, tools["busybox"], tools["zstd"], out)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("packing the root-share initramfs: %w: %s", err, b)
	}
	return nil
}
