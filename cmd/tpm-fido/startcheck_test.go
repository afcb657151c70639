//go:build cgo

package main

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// TestServeStopsOnDamageFoundAfterStart: serve checks at once only the
// part of the state Open reads itself, and the walk over every other
// page runs on after the start. Damage only that walk finds (here a page
// of the tree whose id is flipped) stops the running daemon: exit 1, the
// file and the way out named, the file unchanged — what a damaged state
// found at the start gives.
func TestServeStopsOnDamageFoundAfterStart(t *testing.T) {
	dir, db := realState(t)
	path := tpmstore.StatePath(dir)
	sock := filepath.Join(t.TempDir(), "run", "s")
	found, atStart := 0, 0
	for p := 2; p*4096 < len(db); p++ {
		d := bytes.Clone(db)
		d[p*4096] ^= 0x01 // the page's own id
		if err := os.WriteFile(path, d, 0o600); err != nil {
			t.Fatal(err)
		}
		if _, err := tpmstore.CheckState(dir); err == nil {
			continue // a free page, or one beyond the pages in use
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		var o, e bytes.Buffer
		t0 := time.Now()
		rc := runServeContext(ctx, []string{"--transport", "unix:" + sock, "--tpm", "simulator",
			"--presence", "always-allow", "--insecure-test-mode", "--log-level", "error", "--state-dir", dir}, &o, &e)
		expired := ctx.Err() != nil
		cancel()
		if rc != 1 || expired || !strings.Contains(e.String(), path) || !strings.Contains(e.String(), "tpm-fido reset") {
			t.Fatalf("page %d damaged: serve exited %d after %v (deadline passed: %v), want 1 naming %s and the way out:\n%s", p, rc, time.Since(t0), expired, path, e.String())
		}
		if got, _ := os.ReadFile(path); !bytes.Equal(got, d) {
			t.Fatalf("page %d damaged: serve changed the file", p)
		}
		if !strings.Contains(e.String(), "stopping") {
			atStart++ // Open's own check refused it
			continue
		}
		found++
		if found == 1 {
			t.Logf("page %d damaged: serve stopped after %v:\n%s", p, time.Since(t0), e.String())
		}
	}
	t.Logf("%d damaged pages refused at the start, %d by the check after it", atStart, found)
	if found == 0 {
		t.Fatal("no page whose damage only the check after the start finds: the test does not exercise it")
	}
}
