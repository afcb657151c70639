package vm

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"
)

// BootConfig describes one boot of the guest.
type BootConfig struct {
	Tools     Tools
	Kernel    *Kernel // the cloud kernel; or set Vmlinuz
	Vmlinuz   string  // a kernel image, when Kernel is nil
	Initrd    string
	TPMDir    string // swtpm state; keep it to simulate a reboot with the same TPM
	StateDisk string // raw ext2 image the guest mounts at /state
	Phase     string // passed as e2e.phase=PHASE; selects /e2e/phase-PHASE.sh
	Timeout   time.Duration
	Console   io.Writer // if set, receives the serial console as it arrives

	MemoryMB int      // guest memory; 0 means 1024
	Shares   []Share  // host directories shared over virtio-9p
	Append   []string // more kernel command line arguments
}

// Share is a host directory the guest mounts over virtio-9p by its tag.
type Share struct {
	Tag      string
	Path     string
	ReadOnly bool
}

// ErrTimeout is returned by Boot when the guest did not power off in time.
var ErrTimeout = errors.New("the VM did not power off in time")

// NewStateDisk creates a raw disk image of sizeMB megabytes with an ext2
// file system (the guest's ext4 driver mounts it).
func NewStateDisk(ctx context.Context, tools Tools, path string, sizeMB int) error {
	if err := os.WriteFile(path, nil, 0o644); err != nil {
		return err
	}
	if err := os.Truncate(path, int64(sizeMB)<<20); err != nil {
		return err
	}
	_, err := run(ctx, "", tools["busybox"], "mke2fs", "-F", "-L", "tpmfido-e2e", path)
	return err
}

// Boot starts swtpm and qemu, waits for the guest to power off (or
// cfg.Timeout) and returns the serial console output. The log is returned
// even with an error.
func Boot(ctx context.Context, cfg BootConfig) ([]byte, error) {
	if cfg.Timeout == 0 {
		cfg.Timeout = 4 * time.Minute
	}
	ctx, cancel := context.WithTimeout(ctx, cfg.Timeout)
	defer cancel()
	if err := os.MkdirAll(cfg.TPMDir, 0o700); err != nil {
		return nil, err
	}
	runDir, err := os.MkdirTemp("", "tpm-fido-vm-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(runDir)
	sock := filepath.Join(runDir, "swtpm.sock")

	var swtpmOut bytes.Buffer
	swtpm := exec.CommandContext(ctx, cfg.Tools["swtpm"], "socket", "--tpm2",
		"--tpmstate", "dir="+cfg.TPMDir,
		"--ctrl", "type=unixio,path="+sock, "--terminate")
	swtpm.Stdout, swtpm.Stderr = &swtpmOut, &swtpmOut
	if err := swtpm.Start(); err != nil {
		return nil, fmt.Errorf("starting swtpm: %w", err)
	}
	swtpmDone := make(chan error, 1)
	go func() { swtpmDone <- swtpm.Wait() }()
	defer func() {
		select {
		case <-swtpmDone:
		case <-time.After(5 * time.Second):
			_ = swtpm.Process.Kill()
			<-swtpmDone
		}
	}()
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case err := <-swtpmDone:
			swtpmDone <- err
			return nil, fmt.Errorf("swtpm exited: %v: %s", err, swtpmOut.String())
		case <-time.After(50 * time.Millisecond):
		}
		if i > 200 {
			return nil, fmt.Errorf("swtpm made no socket in 10 s: %s", swtpmOut.String())
		}
	}

	vmlinuz := cfg.Vmlinuz
	if cfg.Kernel != nil {
		vmlinuz = cfg.Kernel.Vmlinuz
	}
	mem := cfg.MemoryMB
	if mem == 0 {
		mem = 1024
	}
	cmdline := append([]string{"console=ttyS0", "rdinit=/init", "panic=-1", "quiet", "loglevel=4", "e2e.phase=" + cfg.Phase}, cfg.Append...)
	args := []string{"-accel", "tcg", "-machine", "q35", "-cpu", "max", "-smp", "2", "-m", strconv.Itoa(mem),
		"-nodefaults", "-no-user-config", "-display", "none", "-monitor", "none", "-serial", "stdio", "-no-reboot",
		"-kernel", vmlinuz, "-initrd", cfg.Initrd,
		"-append", strings.Join(cmdline, " "),
		"-chardev", "socket,id=chrtpm,path=" + sock,
		"-tpmdev", "emulator,id=tpm0,chardev=chrtpm",
		"-device", "tpm-tis,tpmdev=tpm0",
	}
	if cfg.StateDisk != "" {
		args = append(args, "-drive", "file="+cfg.StateDisk+",format=raw,if=none,id=state",
			"-device", "nvme,drive=state,serial=e2estate")
	}
	for i, sh := range cfg.Shares {
		id := "share" + strconv.Itoa(i)
		fsdev := "local,id=" + id + ",path=" + sh.Path + ",security_model=none,multidevs=remap"
		if sh.ReadOnly {
			fsdev += ",readonly=on"
		}
		args = append(args, "-fsdev", fsdev, "-device", "virtio-9p-pci,fsdev="+id+",mount_tag="+sh.Tag)
	}
	var log bytes.Buffer
	qemu := exec.CommandContext(ctx, cfg.Tools["qemu-system-x86_64"], args...)
	if cfg.Console != nil {
		qemu.Stdout = io.MultiWriter(&log, cfg.Console)
	} else {
		qemu.Stdout = &log
	}
	qemu.Stderr = qemu.Stdout
	qemu.WaitDelay = 5 * time.Second
	err = qemu.Run()
	if ctx.Err() == context.DeadlineExceeded {
		return log.Bytes(), fmt.Errorf("%w (%s)", ErrTimeout, cfg.Timeout)
	}
	if err != nil {
		return log.Bytes(), fmt.Errorf("qemu: %w", err)
	}
	if !bytes.Contains(log.Bytes(), []byte("E2E-DONE phase="+cfg.Phase)) {
		return log.Bytes(), fmt.Errorf("the guest powered off without finishing phase %s", strconv.Quote(cfg.Phase))
	}
	return log.Bytes(), nil
}
