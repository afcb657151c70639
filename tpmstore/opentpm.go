package tpmstore

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxudstpm"
)

// DefaultTPM is the TPM device used when none is configured: the kernel's
// resource-managed TPM 2.0 device.
const DefaultTPM = "/dev/tpmrm0"

// OpenTPM opens the TPM named by spec: a device path such as
// "/dev/tpmrm0", or "swtpm:PATH" for the Unix data socket of a swtpm
// process. ("simulator" is not handled here; see package tpmsim.) The
// errors name the fix: a missing device, a permission problem, or a path
// that is not a TPM.
func OpenTPM(spec string) (transport.TPMCloser, error) {
	if spec == "" {
		spec = DefaultTPM
	}
	if path, ok := strings.CutPrefix(spec, "swtpm:"); ok {
		t, err := linuxudstpm.Open(path)
		if err != nil {
			if errors.Is(err, fs.ErrNotExist) {
				return nil, fmt.Errorf("no swtpm socket at %s (start one: %s): %w", path, SwtpmCommand(path), err)
			}
			return nil, fmt.Errorf("open swtpm socket %s: %w", path, err)
		}
		return t, nil
	}
	if spec == "simulator" {
		return nil, fmt.Errorf("TPM %q: the simulator is only available in builds with cgo (package tpmsim)", spec)
	}
	return openDevice(spec)
}

// SwtpmCommand is the shell command that starts a swtpm serving a TPM 2.0
// on the data socket sock, with its state in a directory beside it.
func SwtpmCommand(sock string) string {
	state := filepath.Join(filepath.Dir(sock), "swtpm-state")
	return fmt.Sprintf("mkdir -p %s && swtpm socket --tpm2 --tpmstate dir=%s --server type=unixio,path=%s --flags not-need-init,startup-clear", state, state, sock)
}

func openDevice(path string) (transport.TPMCloser, error) {
	fi, err := os.Stat(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil, fmt.Errorf("no TPM at %s (is the TPM enabled in firmware? modprobe tpm_crb/tpm_tis): %w", path, err)
		}
		return nil, fmt.Errorf("TPM %s: %w", path, err)
	}
	if fi.Mode()&fs.ModeDevice == 0 {
		return nil, fmt.Errorf("TPM %s is not a device (%s); use swtpm:PATH for a swtpm socket", path, fi.Mode())
	}
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if err != nil {
		if errors.Is(err, fs.ErrPermission) {
			return nil, fmt.Errorf("permission denied on %s (add yourself to the tss group, or install the udev rule giving the tss group rw on tpmrm0, then log in again): %w", path, err)
		}
		return nil, fmt.Errorf("open TPM %s: %w", path, err)
	}
	return transport.FromReadWriteCloser(f), nil
}
