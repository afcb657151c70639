package main

import (
	"bytes"
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
	var sink bytes.Buffer
	// parseServeFlags defines the flags; -h makes it stop after that.
	_, _ = parseServeFlags([]string{"-h"}, &sink)
	for _, line := range strings.Split(sink.String(), "\n") {
		line = strings.TrimSpace(line)
		if !strings.HasPrefix(line, "-") {
			continue
		}
		name := strings.Fields(line)[0]
		if !strings.Contains(man, "-"+name) {
			t.Errorf("man page does not document serve flag -%s", name)
		}
	}
	if sink.Len() == 0 {
		t.Fatal("serve printed no flags for -h")
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
