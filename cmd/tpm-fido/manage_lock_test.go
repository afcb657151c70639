package main

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2/transport"
	bolt "go.etcd.io/bbolt"
)

func TestStoreCommandsDaemonRunning(t *testing.T) {
	dir := t.TempDir()
	// Hold the database as the daemon would.
	db, err := bolt.Open(filepath.Join(dir, stateDBName), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
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
