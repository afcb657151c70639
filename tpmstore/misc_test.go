package tpmstore

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-tpm/tpm2"
)

type recordTPM struct{ got [][]byte }

func (r *recordTPM) Send(b []byte) ([]byte, error) {
	r.got = append(r.got, b)
	return nil, errors.New("no TPM")
}

func TestCountingTPM(t *testing.T) {
	inner := &recordTPM{}
	ct := NewCountingTPM(inner)
	sign := []byte{0x80, 0x02, 0, 0, 0, 10, 0, 0, 0x01, 0x5d}  // TPM_CC_Sign
	flush := []byte{0x80, 0x01, 0, 0, 0, 14, 0, 0, 0x01, 0x65} // TPM_CC_FlushContext
	ct.Send(sign)
	ct.Send(sign)
	ct.Send(flush)
	ct.Send([]byte{1, 2}) // short: counted under code 0, still passed on
	if ct.Count(tpm2.TPMCCSign) != 2 || ct.Count(tpm2.TPMCCFlushContext) != 1 || ct.Total() != 4 {
		t.Fatalf("counts %v", ct.Snapshot())
	}
	if len(inner.got) != 4 || !bytes.Equal(inner.got[0], sign) {
		t.Fatal("commands not passed on unchanged")
	}
	ct.Reset()
	if ct.Total() != 0 {
		t.Fatal("Reset did not clear")
	}
}

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
	c, err := s.CreateCredential(rp, CredentialOptions{CredProtect: 3, HMACSecret: true, Resident: true})
	if err != nil {
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
