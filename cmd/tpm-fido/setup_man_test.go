package main

import (
	"bytes"
	"flag"
	"os"
	"os/exec"
	"strings"
	"testing"
)

// TestManPageCoversCommandsAndFlags keeps docs/tpm-fido.1 in step with the
// command table and serve's flags.
func TestManPageCoversCommandsAndFlags(t *testing.T) {
	b, err := os.ReadFile("../../docs/tpm-fido.1")
	if err != nil {
		t.Fatal(err)
	}
	// roff escapes hyphens as \-.
	man := strings.ReplaceAll(string(b), `\-`, "-")
	for _, c := range commands() {
		if !strings.Contains(man, ".B "+c.name) && !strings.Contains(man, ".BI "+c.name) {
			t.Errorf("man page does not document command %q", c.name)
		}
	}
	// parseServeFlags defines the flags; -h makes it stop after that.
	_, fl, _ := parseServeFlags([]string{"-h"})
	n := 0
	fl.VisitAll(func(f *flag.Flag) {
		n++
		if !strings.Contains(man, "--"+f.Name) {
			t.Errorf("man page does not document serve flag --%s", f.Name)
		}
	})
	if n == 0 {
		t.Fatal("serve defines no flags")
	}
}

func TestManPageRenders(t *testing.T) {
	groff, err := exec.LookPath("groff")
	if err != nil {
		t.Skip("groff not installed")
	}
	out, err := exec.Command(groff, "-man", "-ww", "-z", "../../docs/tpm-fido.1").CombinedOutput()
	if err != nil || len(bytes.TrimSpace(out)) != 0 {
		t.Fatalf("groff -ww: %v\n%s", err, out)
	}
}
