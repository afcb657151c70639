package vm

import (
	"context"
	"embed"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
)

//go:embed guest
var guestFiles embed.FS

// InitramfsConfig says what goes into the guest's initramfs.
type InitramfsConfig struct {
	Tools  Tools
	Kernel *Kernel
	Daemon string // the static tpm-fido binary
	Out    string // the .cpio.zst to write
	Udev   *Udev  // Debian's udev for the udev scenarios; nil leaves it out
}

// Guest programs copied from the host, with their guest directory.
var guestPrograms = []struct{ tool, dir string }{
	{"fido2-token", "usr/bin"},
	{"fido2-cred", "usr/bin"},
	{"fido2-assert", "usr/bin"},
	{"ssh", "usr/bin"},
	{"ssh-keygen", "usr/bin"},
	{"sshd", "usr/sbin"},
	{"ssh-sk-helper", "usr/lib/openssh"},
	// Only so that doctor finds a presence backend, as on a desktop
	// without a notification server; the daemons under test use
	// --presence always-allow/always-deny.
	{"pinentry-curses", "usr/bin"},
	// Creates group uhid and the relay's system user from the sysusers.d
	// entry `tpm-fido setup` installs, as at boot on a systemd machine.
	{"systemd-sysusers", "usr/bin"},
}

const sshdConfig = `# sshd for the tpm-fido end-to-end guest
ListenAddress 127.0.0.1
Port 22
HostKey /etc/ssh/ssh_host_ed25519_key
PubkeyAcceptedAlgorithms +sk-ecdsa-sha2-nistp256@openssh.com
AuthorizedKeysFile /state/e2e/authorized_keys
StrictModes no
UsePAM no
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin no
LogLevel VERBOSE
PidFile /run/sshd.pid
`

var etcFiles = map[string]struct {
	mode os.FileMode
	text string
}{
	"etc/passwd": {0o644, "root:x:0:0:root:/root:/bin/sh\n" +
		"sshd:x:100:65534::/run/sshd:/usr/sbin/nologin\n" +
		"user:x:1000:1000:e2e user:/home/user:/bin/sh\n"},
	"etc/group":           {0o644, "root:x:0:\nuser:x:1000:\nnogroup:x:65534:\n"},
	"etc/shadow":          {0o600, "root:*:19000:0:99999:7:::\nsshd:*:19000:0:99999:7:::\nuser:*:19000:0:99999:7:::\n"},
	"etc/nsswitch.conf":   {0o644, "passwd: files\ngroup: files\nshadow: files\nhosts: files\n"},
	"etc/hosts":           {0o644, "127.0.0.1 localhost e2e\n"},
	"etc/hostname":        {0o644, "e2e\n"},
	"etc/ssh/sshd_config": {0o644, sshdConfig},
}

// BuildInitramfs stages the guest's root file system in a temporary
// directory and packs it with busybox cpio and zstd into cfg.Out.
func BuildInitramfs(ctx context.Context, cfg InitramfsConfig) error {
	stage, err := os.MkdirTemp("", "tpm-fido-initramfs-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(stage)
	if err := stageRoot(ctx, cfg, stage); err != nil {
		return fmt.Errorf("staging the initramfs: %w", err)
	}
	script := `set -e; cd "$1"; find . | "$2" cpio -o -H newc -R 0:0 2>/dev/null | "$3" -3 -q -T0 >"$4"`
	cmd := exec.CommandContext(ctx, "sh", "-c", script, "sh", stage, cfg.Tools["busybox"], cfg.Tools["zstd"], cfg.Out)
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("packing the initramfs: %w: %s", err, b)
	}
	return nil
}

func stageRoot(ctx context.Context, cfg InitramfsConfig, stage string) error {
	// The guest's / (MkdirTemp made it 0700: no one but root could log in).
	if err := os.Chmod(stage, 0o755); err != nil {
		return err
	}
	for _, d := range []string{"usr/bin", "usr/sbin", "usr/lib/modules/e2e", "usr/lib64", "usr/lib/openssh",
		"etc/ssh", "root", "home/user", "proc", "sys", "dev", "run", "tmp", "state", "e2e", "var/empty"} {
		if err := os.MkdirAll(filepath.Join(stage, d), 0o755); err != nil {
			return err
		}
	}
	for _, l := range []string{"bin", "sbin", "lib", "lib64"} {
		if err := os.Symlink("usr/"+l, filepath.Join(stage, l)); err != nil {
			return err
		}
	}
	if err := os.Chmod(filepath.Join(stage, "tmp"), 0o1777); err != nil {
		return err
	}
	// busybox and its applet links.
	bb := cfg.Tools["busybox"]
	if err := copyFile(bb, filepath.Join(stage, "usr/bin/busybox"), 0o755); err != nil {
		return err
	}
	out, err := run(ctx, "", bb, "--list")
	if err != nil {
		return err
	}
	for _, applet := range strings.Fields(string(out)) {
		if applet == "busybox" || strings.ContainsRune(applet, '/') {
			continue
		}
		if err := os.Symlink("busybox", filepath.Join(stage, "usr/bin", applet)); err != nil && !os.IsExist(err) {
			return err
		}
	}
	// Host programs and every library ldd lists for them.
	libs := map[string]bool{}
	for _, p := range guestPrograms {
		src := cfg.Tools[p.tool]
		if err := copyFile(src, filepath.Join(stage, p.dir, filepath.Base(src)), 0o755); err != nil {
			return err
		}
		deps, err := lddLibs(ctx, src)
		if err != nil {
			return err
		}
		for _, l := range deps {
			libs[l] = true
		}
	}
	if cfg.Udev != nil {
		progs, err := stageUdev(cfg.Udev, stage)
		if err != nil {
			return err
		}
		for _, p := range progs {
			deps, err := lddLibs(ctx, p)
			if err != nil {
				return err
			}
			for _, l := range deps {
				libs[l] = true
			}
		}
	}
	for l := range libs {
		if err := copyFile(l, filepath.Join(stage, usrPath(l)), 0o755); err != nil {
			return err
		}
	}
	if err := copyFile(cfg.Daemon, filepath.Join(stage, "usr/bin/tpm-fido"), 0o755); err != nil {
		return err
	}
	for name, path := range cfg.Kernel.Modules {
		if err := copyFile(path, filepath.Join(stage, "usr/lib/modules/e2e", name+".ko"), 0o644); err != nil {
			return err
		}
	}
	for name, f := range etcFiles {
		if err := os.WriteFile(filepath.Join(stage, name), []byte(f.text), f.mode); err != nil {
			return err
		}
	}
	if _, err := run(ctx, "", cfg.Tools["ssh-keygen"], "-q", "-t", "ed25519", "-N", "", "-C", "e2e-host",
		"-f", filepath.Join(stage, "etc/ssh/ssh_host_ed25519_key")); err != nil {
		return err
	}
	// The guest scripts: /init and /e2e/*.
	return fs.WalkDir(guestFiles, "guest", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := guestFiles.ReadFile(p)
		if err != nil {
			return err
		}
		name := filepath.Base(p)
		dst := filepath.Join(stage, "e2e", name)
		if name == "init" {
			dst = filepath.Join(stage, "init")
		}
		return os.WriteFile(dst, b, 0o755)
	})
}

var lddLine = regexp.MustCompile(`(?:=>\s*)?(/\S+)\s+\(0x[0-9a-f]+\)`)

// lddLibs lists the shared libraries (with the dynamic loader) of a program.
func lddLibs(ctx context.Context, prog string) ([]string, error) {
	out, err := run(ctx, "", "ldd", prog)
	if err != nil {
		return nil, err
	}
	var libs []string
	for _, line := range strings.Split(string(out), "\n") {
		if m := lddLine.FindStringSubmatch(line); m != nil {
			libs = append(libs, m[1])
		}
	}
	if len(libs) == 0 {
		return nil, fmt.Errorf("ldd %s lists no libraries", prog)
	}
	return libs, nil
}

// usrPath maps a host path into the guest's merged-/usr layout.
func usrPath(p string) string {
	p = strings.TrimPrefix(p, "/")
	for _, top := range []string{"lib/", "lib64/", "bin/", "sbin/"} {
		if strings.HasPrefix(p, top) {
			return "usr/" + p
		}
	}
	return p
}
