//go:build cgo

package main

import (
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tpm-fido/tpm-fido/tpmstore"
)

func TestStoreCommandsDaemonRunning(t *testing.T) {
	dir, tpm := withSimulator(t)
	// Hold the state as the daemon does: an open key store.
	s, err := tpmstore.Open(tpmstore.Config{TPM: tpm, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	old := openTPM
	openTPM = func(string) (transport.TPMCloser, error) {
		t.Error("the TPM was opened although the state is locked")
		return nil, errDaemonRunning
	}
	defer func() { openTPM = old }()
	for _, args := range [][]string{{"list"}, {"pin", "status"}, {"pin", "set"}, {"delete"}, {"reset"}} {
		if args[0] == "delete" {
			args = []string{"delete", "--state-dir=" + dir, "AAAA"}
		} else {
			args = append(args, "--state-dir="+dir)
		}
		_, e, rc := runCmd(t, args...)
		if rc == 0 || !strings.Contains(e, "the daemon is running") || !strings.Contains(e, "systemctl --user stop tpm-fido") {
			t.Errorf("%v with the state locked: rc %d, stderr %q", args, rc, e)
		}
	}
}
