package tpmstore

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"net"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/tpm-fido/tpm-fido/tpmstore/tpmsim"
)

// backend starts a fresh TPM ("machine") for a test.
type backend struct {
	name string
	// open starts a new, independent TPM. Each call is another machine.
	open func(t testing.TB) transport.TPMCloser
}

func backends(t testing.TB) []backend {
	bs := []backend{{"simulator", openSimulator}}
	if _, err := exec.LookPath("swtpm"); err == nil {
		bs = append(bs, backend{"swtpm", func(t testing.TB) transport.TPMCloser {
			tpm, _ := startSWTPM(t)
			return tpm
		}})
	} else {
		t.Logf("swtpm not on PATH: swtpm backend skipped")
	}
	return bs
}

func openSimulator(t testing.TB) transport.TPMCloser {
	t.Helper()
	tpm, err := tpmsim.Open()
	if err != nil {
		t.Fatalf("simulator: %v", err)
	}
	t.Cleanup(func() { tpm.Close() })
	relaxDA(t, tpm)
	return tpm
}

// startSWTPM starts a swtpm process with its own state in a temporary
// directory; it is killed when the test ends. It returns the connection
// and the "swtpm:PATH" spec.
func startSWTPM(t testing.TB) (transport.TPMCloser, string) {
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
	relaxDA(t, tpm)
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

// setDAParameters sends TPM2_DictionaryAttackParameters with an empty
// password session for TPM_RH_LOCKOUT (go-tpm's direct API has no
// wrapper for it).
func setDAParameters(tpm transport.TPM, maxTries, recoveryTime, lockoutRecovery uint32) error {
	var b []byte
	b = binary.BigEndian.AppendUint16(b, 0x8002) // TPM_ST_SESSIONS
	b = binary.BigEndian.AppendUint32(b, 0)      // size, patched below
	b = binary.BigEndian.AppendUint32(b, 0x13A)  // TPM_CC_DictionaryAttackParameters
	b = binary.BigEndian.AppendUint32(b, 0x4000000A)
	b = binary.BigEndian.AppendUint32(b, 9)          // authorization size
	b = binary.BigEndian.AppendUint32(b, 0x40000009) // TPM_RS_PW
	b = binary.BigEndian.AppendUint16(b, 0)          // nonce
	b = append(b, 0)                                 // session attributes
	b = binary.BigEndian.AppendUint16(b, 0)          // empty password
	b = binary.BigEndian.AppendUint32(b, maxTries)
	b = binary.BigEndian.AppendUint32(b, recoveryTime)
	b = binary.BigEndian.AppendUint32(b, lockoutRecovery)
	binary.BigEndian.PutUint32(b[2:], uint32(len(b)))
	rsp, err := tpm.Send(b)
	if err != nil {
		return err
	}
	if len(rsp) < 10 {
		return fmt.Errorf("short response %x", rsp)
	}
	if rc := binary.BigEndian.Uint32(rsp[6:10]); rc != 0 {
		return fmt.Errorf("TPM rc 0x%x", rc)
	}
	return nil
}
