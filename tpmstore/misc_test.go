package tpmstore

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/sha256"
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

func TestOpenTPMErrors(t *testing.T) {
	dir := t.TempDir()
	_, err := OpenTPM(filepath.Join(dir, "tpmrm0"))
	if err == nil || !strings.Contains(err.Error(), "no TPM at") || !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("missing device: %v", err)
	}
	plain := filepath.Join(dir, "file")
	os.WriteFile(plain, nil, 0o600)
	if _, err := OpenTPM(plain); err == nil || !strings.Contains(err.Error(), "not a device") {
		t.Fatalf("regular file: %v", err)
	}
	if _, err := OpenTPM("swtpm:" + filepath.Join(dir, "nosock")); err == nil || !strings.Contains(err.Error(), "no swtpm socket") {
		t.Fatalf("missing swtpm socket: %v", err)
	}
	if _, err := OpenTPM("simulator"); err == nil {
		t.Fatal("OpenTPM(simulator) succeeded")
	}
}

func FuzzOpenCredential(f *testing.F) {
	tpm := openSimulator(f)
	s := openStore(f, tpm, f.TempDir())
	rp := rpHash("example.org")
	if err := s.SetPIN(pinHash("1234")); err != nil { // credProtect 3 binds to it
		f.Fatal(err)
	}
	c, err := s.CreateCredential(rp, CredentialOptions{CredProtect: 3, HMACSecret: true, Resident: true})
	if err != nil {
		f.Fatal(err)
	}
	if err := s.PutResident(testResident(f, c, "alice", time.Now())); err != nil {
		f.Fatal(err)
	}
	f.Add(c.ID)
	f.Add([]byte{1})
	f.Add(foreignIDs(1)[0])
	f.Fuzz(func(t *testing.T, id []byte) {
		got, err := s.OpenCredential(rp, id)
		if bytes.Equal(id, c.ID) {
			if err != nil || !got.PublicKey.Equal(c.PublicKey) {
				t.Fatalf("own ID rejected: %v", err)
			}
			return
		}
		if !errors.Is(err, ErrCredentialInvalid) {
			t.Fatalf("altered ID: err = %v", err)
		}
	})
}

// flushAllTransient flushes every transient object behind the store's
// back, as a TPM restart or another process would.
func flushAllTransient(t *testing.T, tpm transport.TPM) int {
	t.Helper()
	rsp, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(tpm2.TPMHTTransient) << 24, PropertyCount: 64}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	hs, err := rsp.CapabilityData.Data.Handles()
	if err != nil {
		t.Fatal(err)
	}
	for _, h := range hs.Handle {
		if _, err := (tpm2.FlushContext{FlushHandle: h}).Execute(tpm); err != nil {
			t.Fatal(err)
		}
	}
	return len(hs.Handle)
}

func TestRecoverLostObjects(t *testing.T) {
	for _, b := range backends(t) {
		t.Run(b.name, func(t *testing.T) {
			tpm := b.open(t)
			s := openStore(t, tpm, t.TempDir())
			rp := rpHash("example.org")
			c, err := s.CreateCredential(rp, CredentialOptions{HMACSecret: true})
			if err != nil {
				t.Fatal(err)
			}
			r1, err := s.CredRandom(c, false)
			if err != nil {
				t.Fatal(err)
			}
			if err := s.SetPIN(pinHash("1234")); err != nil {
				t.Fatal(err)
			}
			if n := flushAllTransient(t, tpm); n < 1 {
				t.Fatalf("flushed %d objects, want at least the SRK", n)
			}
			signVerify(t, s, c, "x", "after the TPM lost the objects")
			flushAllTransient(t, tpm)
			r2, err := s.CredRandom(c, false)
			if err != nil || !bytes.Equal(r1, r2) {
				t.Fatalf("CredRandom after recovery: %v, equal=%v", err, bytes.Equal(r1, r2))
			}
			flushAllTransient(t, tpm)
			if err := s.VerifyPIN(pinHash("1234")); err != nil || s.PINRetries() != 8 {
				t.Fatalf("VerifyPIN after recovery: %v, retries %d", err, s.PINRetries())
			}
			flushAllTransient(t, tpm)
			if _, err := s.CreateCredential(rp, CredentialOptions{}); err != nil {
				t.Fatalf("CreateCredential after recovery: %v", err)
			}
		})
	}
}

func TestConcurrentUse(t *testing.T) {
	tpm := openSimulator(t)
	s := openStore(t, tpm, t.TempDir())
	rp := rpHash("example.org")
	var creds []*Credential
	for range 3 {
		c, err := s.CreateCredential(rp, CredentialOptions{HMACSecret: true})
		if err != nil {
			t.Fatal(err)
		}
		creds = append(creds, c)
	}
	const workers, rounds = 4, 20
	counters := make(chan uint32, workers*rounds)
	errs := make(chan error, workers)
	for w := range workers {
		go func() {
			d := sha256.Sum256([]byte{byte(w)})
			for i := range rounds {
				c := creds[(w+i)%len(creds)]
				sig, err := s.Sign(c, d[:])
				if err != nil || !ecdsa.VerifyASN1(c.PublicKey, d[:], sig) {
					errs <- fmt.Errorf("worker %d sign: %v", w, err)
					return
				}
				if _, err := s.CredRandom(c, i%2 == 0); err != nil {
					errs <- err
					return
				}
				n, err := s.NextCounter()
				if err != nil {
					errs <- err
					return
				}
				counters <- n
				if _, err := s.ResidentCount(); err != nil {
					errs <- err
					return
				}
			}
			errs <- nil
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
	}
	close(counters)
	seen := map[uint32]bool{}
	for n := range counters {
		if seen[n] {
			t.Fatalf("counter value %d handed out twice", n)
		}
		seen[n] = true
	}
}

// failUnseal passes commands on, but "crashes" on TPM2_Unseal: the
// command is never answered, as when the daemon dies mid-check.
type failUnseal struct {
	transport.TPM
	fail bool
}

func (f *failUnseal) Send(b []byte) ([]byte, error) {
	if f.fail && len(b) >= 10 && tpm2.TPMCC(binary.BigEndian.Uint32(b[6:10])) == tpm2.TPMCCUnseal {
		return nil, errors.New("connection lost")
	}
	return f.TPM.Send(b)
}

// TestPINRetryPersistedBeforeCheck: the decremented retry count is on
// disk before the TPM sees the PIN, so dying mid-check costs a retry.
func TestPINRetryPersistedBeforeCheck(t *testing.T) {
	tpm := openSimulator(t)
	f := &failUnseal{TPM: tpm}
	dir := t.TempDir()
	s := openStore(t, f, dir)
	if err := s.SetPIN(pinHash("1234")); err != nil {
		t.Fatal(err)
	}
	f.fail = true
	if err := s.VerifyPIN(pinHash("1234")); err == nil {
		t.Fatal("VerifyPIN succeeded without an answer from the TPM")
	}
	s.Close()
	s = openStore(t, tpm, dir)
	if r := s.PINRetries(); r != 7 {
		t.Fatalf("retries after an unanswered check: %d, want 7", r)
	}
	if err := s.VerifyPIN(pinHash("1234")); err != nil || s.PINRetries() != 8 {
		t.Fatalf("right PIN: %v, retries %d", err, s.PINRetries())
	}
}

// TestSwtpmHintWorks runs the command OpenTPM's error gives for a missing
// swtpm socket, exactly as printed, and opens the TPM it starts.
func TestSwtpmHintWorks(t *testing.T) {
	if _, err := exec.LookPath("swtpm"); err != nil {
		t.Skip("swtpm not installed")
	}
	sock := filepath.Join(t.TempDir(), "tpm.sock")
	_, err := OpenTPM("swtpm:" + sock)
	m := regexp.MustCompile(`\(start (?:one: )?([^)]*)\)`).FindStringSubmatch(fmt.Sprint(err))
	if m == nil {
		t.Fatalf("no command in %v", err)
	}
	cmd := exec.Command("sh", "-c", m[1])
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true} // the shell and swtpm
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var waitErr error
	go func() { waitErr = cmd.Wait(); close(exited) }()
	t.Cleanup(func() { _ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL); <-exited })
	for deadline := time.Now().Add(5 * time.Second); ; {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		select {
		case <-exited:
			t.Fatalf("%s: %v\n%s", m[1], waitErr, out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s made no socket in 5 s\n%s", m[1], out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
	tpm, err := OpenTPM("swtpm:" + sock)
	if err != nil {
		t.Fatal(err)
	}
	defer tpm.Close()
	if _, err := (tpm2.GetRandom{BytesRequested: 8}).Execute(tpm); err != nil {
		t.Fatalf("the hinted swtpm does not answer: %v", err)
	}
}
