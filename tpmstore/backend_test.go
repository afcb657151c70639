package tpmstore

import (
	"bytes"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/tpm-fido/tpm-fido/tpmstore/tpmsim"
	"github.com/tpm-fido/tpm-fido/tpmstore/tpmtest"
)

// backend starts a fresh TPM ("machine") for a test.
type backend struct {
	name string
	// open starts a new, independent TPM. Each call is another machine.
	// Its dictionary-attack policy is relaxed (see relaxDA).
	open func(t testing.TB) transport.TPMCloser
	// openDefault is open with the TPM's own dictionary-attack policy
	// left as manufactured.
	openDefault func(t testing.TB) transport.TPMCloser
}

func backends(t testing.TB) []backend {
	bs := []backend{{"simulator", openSimulator, openSimulatorDefault}}
	if _, err := exec.LookPath("swtpm"); err == nil {
		bs = append(bs, backend{"swtpm", func(t testing.TB) transport.TPMCloser {
			tpm, _ := startSWTPM(t)
			return tpm
		}, func(t testing.TB) transport.TPMCloser {
			tpm, _ := startSWTPMDefault(t)
			return tpm
		}})
	} else {
		t.Logf("swtpm not on PATH: swtpm backend skipped")
	}
	return bs
}

func openSimulator(t testing.TB) transport.TPMCloser {
	t.Helper()
	tpm := openSimulatorDefault(t)
	relaxDA(t, tpm)
	return tpm
}

func openSimulatorDefault(t testing.TB) transport.TPMCloser {
	t.Helper()
	tpm, err := tpmsim.Open()
	if err != nil {
		t.Fatalf("simulator: %v", err)
	}
	t.Cleanup(func() { tpm.Close() })
	return tpm
}

// startSWTPM starts a swtpm process with its own state in a temporary
// directory; it is killed when the test ends. It returns the connection
// and the "swtpm:PATH" spec.
func startSWTPM(t testing.TB) (transport.TPMCloser, string) {
	t.Helper()
	tpm, spec := startSWTPMDefault(t)
	relaxDA(t, tpm)
	return tpm, spec
}

// startSWTPMDefault is startSWTPM with swtpm's own dictionary-attack
// policy.
func startSWTPMDefault(t testing.TB) (transport.TPMCloser, string) {
	t.Helper()
	dir := t.TempDir()
	sock := filepath.Join(dir, "data.sock")
	cmd := exec.Command("swtpm", "socket", "--tpm2",
		"--server", "type=unixio,path="+sock,
		"--ctrl", "type=unixio,path="+filepath.Join(dir, "ctrl.sock"),
		"--flags", "not-need-init,startup-clear",
		"--tpmstate", "dir="+dir)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start swtpm: %v", err)
	}
	t.Cleanup(func() {
		cmd.Process.Kill()
		cmd.Wait()
		if t.Failed() {
			t.Logf("swtpm stderr:\n%s", stderr.String())
		}
	})
	for i := 0; ; i++ {
		// The socket file appears before swtpm accepts on it.
		if c, err := net.Dial("unix", sock); err == nil {
			c.Close()
			break
		}
		if i > 500 {
			t.Fatalf("swtpm socket %s did not appear", sock)
		}
		time.Sleep(10 * time.Millisecond)
	}
	spec := "swtpm:" + sock
	tpm, err := OpenTPM(spec)
	if err != nil {
		t.Fatalf("OpenTPM(%q): %v", spec, err)
	}
	t.Cleanup(func() { tpm.Close() })
	return tpm, spec
}

// relaxDA sets the TPM's dictionary-attack parameters so that the wrong
// PINs of the tests do not put the test TPM into lockout (the reference
// default is 3 tries, 1000 s recovery). It uses the empty lockout auth of
// a fresh simulator/swtpm. The store itself never does this.
func relaxDA(t testing.TB, tpm transport.TPM) {
	t.Helper()
	if err := setDAParameters(tpm, 1000, 1, 1); err != nil {
		t.Fatalf("TPM2_DictionaryAttackParameters: %v", err)
	}
}

// setDAParameters sets the TPM's dictionary-attack policy.
func setDAParameters(tpm transport.TPM, maxTries, recoveryTime, lockoutRecovery uint32) error {
	return tpmtest.SetDAParameters(tpm, maxTries, recoveryTime, lockoutRecovery)
}
