package vm

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// UdevPackages are the Debian packages the guest's udev comes from: udev
// (systemd-udevd, udevadm, fido_id and the default and FIDO rules) and
// tpm-udev (the rule that gives /dev/tpmrm0 to the tss group).
var UdevPackages = []string{"udev", "tpm-udev"}

// udevFiles are the files taken from UdevPackages, by the end of their
// path, with their guest path. Paths differ between Debian releases
// (merged /usr), so they are found by that suffix after extraction.
var udevFiles = []struct{ suffix, guest string }{
	{"/bin/udevadm", "usr/bin/udevadm"},
	{"/udev/fido_id", "usr/lib/udev/fido_id"},
	{"/rules.d/50-udev-default.rules", "usr/lib/udev/rules.d/50-udev-default.rules"},
	{"/rules.d/60-fido-id.rules", "usr/lib/udev/rules.d/60-fido-id.rules"},
	{"/rules.d/60-tpm-udev.rules", "usr/lib/udev/rules.d/60-tpm-udev.rules"},
}

// systemdRules are the seat and uaccess rules the systemd package ships,
// taken from the host (they are not in the udev package).
var systemdRules = []string{"70-uaccess.rules", "71-seat.rules", "73-seat-late.rules"}

// Udev is Debian's udev for the guest: guest path -> host file.
type Udev struct {
	Version string
	Files   map[string]string
}

// FetchUdev returns udev for the guest. udevadm and fido_id link the
// host's libsystemd-shared, so the udev package of the same version is
// downloaded with apt-get (with tpm-udev) and only the files in udevFiles
// are extracted into cacheDir/udev-VERSION on first use; the systemd
// rules come from the host. Nothing is installed on the host. Errors that
// mean udev cannot be had wrap ErrUnavailable.
func FetchUdev(ctx context.Context, cacheDir string, logw io.Writer) (*Udev, error) {
	out, err := run(ctx, "", "dpkg-query", "-W", "-f=${Version}", "libsystemd-shared")
	version := strings.TrimSpace(string(out))
	if err != nil || version == "" {
		return nil, fmt.Errorf("%w: the guest's udevadm needs the host's libsystemd-shared (apt-get install systemd): %v", ErrUnavailable, err)
	}
	u := &Udev{Version: version, Files: map[string]string{}}
	for _, r := range systemdRules {
		found := ""
		for _, dir := range []string{"/usr/lib/udev/rules.d", "/lib/udev/rules.d"} {
			if _, err := os.Stat(filepath.Join(dir, r)); err == nil {
				found = filepath.Join(dir, r)
				break
			}
		}
		if found == "" {
			return nil, fmt.Errorf("%w: systemd's udev rule %s is missing on the host (apt-get install systemd)", ErrUnavailable, r)
		}
		u.Files["usr/lib/udev/rules.d/"+r] = found
	}
	dir := filepath.Join(cacheDir, "udev-"+strings.NewReplacer(":", "_", "~", "_").Replace(version))
	if loadUdev(u, dir) == nil {
		return u, nil
	}
	specs := []string{"udev=" + version, "tpm-udev"}
	err = fillCache(ctx, cacheDir, dir, logw, "udev "+version+" and tpm-udev", specs, func(debs []string, x, flat string) error {
		for _, deb := range debs {
			if err := extractDeb(ctx, deb, x); err != nil {
				return err
			}
		}
		var extracted []string
		err := filepath.WalkDir(x, func(p string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				extracted = append(extracted, p)
			}
			return err
		})
		if err != nil {
			return err
		}
		for _, f := range udevFiles {
			src := ""
			for _, p := range extracted {
				if strings.HasSuffix(p, f.suffix) {
					src = p
				}
			}
			if src == "" {
				return fmt.Errorf("the udev %s and tpm-udev packages hold no *%s", version, f.suffix)
			}
			if err := copyFile(src, filepath.Join(flat, path.Base(f.suffix)), 0o755); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	if err := loadUdev(u, dir); err != nil {
		return nil, err
	}
	return u, nil
}

func loadUdev(u *Udev, dir string) error {
	for _, f := range udevFiles {
		p := filepath.Join(dir, path.Base(f.suffix))
		if _, err := os.Stat(p); err != nil {
			return err
		}
		u.Files[f.guest] = p
	}
	return nil
}

// stageUdev copies udev into the guest root, links systemd-udevd to
// udevadm (one multi-call binary) and returns the programs whose libraries
// the guest needs.
func stageUdev(u *Udev, stage string) ([]string, error) {
	var progs []string
	for guest, host := range u.Files {
		mode := os.FileMode(0o644)
		if !strings.HasSuffix(guest, ".rules") {
			mode = 0o755
			progs = append(progs, host)
		}
		if err := copyFile(host, filepath.Join(stage, guest), mode); err != nil {
			return nil, err
		}
	}
	if err := os.MkdirAll(filepath.Join(stage, "usr/lib/systemd"), 0o755); err != nil {
		return nil, err
	}
	if err := os.Symlink("../../bin/udevadm", filepath.Join(stage, "usr/lib/systemd/systemd-udevd")); err != nil {
		return nil, err
	}
	return progs, nil
}
