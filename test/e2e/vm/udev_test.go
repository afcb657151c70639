package vm

import (
	"os"
	"path"
	"path/filepath"
	"slices"
	"testing"
)

func TestLoadAndStageUdev(t *testing.T) {
	cache := t.TempDir()
	u := &Udev{Files: map[string]string{}}
	if err := loadUdev(u, cache); err == nil {
		t.Fatal("loadUdev accepted an empty cache directory")
	}
	for _, f := range udevFiles {
		if err := os.WriteFile(filepath.Join(cache, path.Base(f.suffix)), []byte(f.guest), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if err := loadUdev(u, cache); err != nil {
		t.Fatal(err)
	}
	stage := t.TempDir()
	progs, err := stageUdev(u, stage)
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(progs)
	want := []string{filepath.Join(cache, "fido_id"), filepath.Join(cache, "udevadm")}
	if !slices.Equal(progs, want) {
		t.Errorf("programs = %q, want %q", progs, want)
	}
	for _, f := range udevFiles {
		b, err := os.ReadFile(filepath.Join(stage, f.guest))
		if err != nil || string(b) != f.guest {
			t.Errorf("%s: %q, %v", f.guest, b, err)
		}
	}
	fi, err := os.Stat(filepath.Join(stage, "usr/bin/udevadm"))
	if err != nil || fi.Mode().Perm()&0o111 == 0 {
		t.Errorf("udevadm not staged executable: %v", err)
	}
	// systemd-udevd is udevadm under another name, reached from
	// usr/lib/systemd.
	b, err := os.ReadFile(filepath.Join(stage, "usr/lib/systemd/systemd-udevd"))
	if err != nil || string(b) != "usr/bin/udevadm" {
		t.Errorf("systemd-udevd does not lead to udevadm: %q, %v", b, err)
	}
}
