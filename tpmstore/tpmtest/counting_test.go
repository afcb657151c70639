package tpmtest

import (
	"bytes"
	"errors"
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
	snap := ct.Snapshot()
	ct.Send(sign)
	ct.Restore(snap)
	if ct.Count(tpm2.TPMCCSign) != 2 || ct.Total() != 4 {
		t.Fatalf("Restore: counts %v", ct.Snapshot())
	}
	ct.Reset()
	if ct.Total() != 0 {
		t.Fatal("Reset did not clear")
	}
}
