package u2f_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"testing"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/u2f"
	"github.com/tpm-fido/tpm-fido/presence"
)

// FuzzHandleRequest sends arbitrary APDUs: every one must get a response
// ending in a known status word, with data only on success.
func FuzzHandleRequest(f *testing.F) {
	app, ch := sha256.Sum256([]byte("https://example.com")), sha256.Sum256([]byte("c"))
	f.Add([]byte{0, 3, 0, 0})
	f.Add([]byte{0, 3, 0, 0, 0, 0, 0, 0, 0}) // python-fido2's VERSION: extended Lc 0, Le 0
	f.Add(extAPDU(1, 3, append(ch[:], app[:]...)))
	f.Add(shortAPDU(1, 0, append(ch[:], app[:]...)))
	f.Add(extAPDU(2, 7, authData(ch, app, make([]byte, 80))))
	f.Add(extAPDU(2, 3, authData(ch, app, make([]byte, 255))))
	f.Add(shortAPDU(2, 8, authData(ch, app, []byte{1, 2, 3})))
	f.Add([]byte{0, 2, 3, 0, 0, 0xff, 0xff})

	st := newFakeStore()
	h := newHandler(f, st, presence.Fixed{Allow: true})
	// One real key handle so the fuzzer can reach the signing paths.
	resp, _ := h.Handle(context.Background(), ctap.Request{Cmd: ctap.CmdMsg, Payload: extAPDU(1, 3, append(ch[:], app[:]...))})
	if len(resp) > 67 {
		kh := resp[67 : 67+int(resp[66])]
		f.Add(extAPDU(2, 3, authData(ch, app, kh)))
		f.Add(extAPDU(2, 8, authData(ch, app, kh)))
	}
	known := map[uint16]bool{
		u2f.SWNoError: true, u2f.SWConditionsNotSatisfied: true, u2f.SWWrongData: true,
		u2f.SWWrongLength: true, u2f.SWWrongP1P2: true, u2f.SWInsNotSupported: true,
		u2f.SWCLANotSupported: true,
	}
	f.Fuzz(func(t *testing.T, req []byte) {
		resp, err := h.Handle(context.Background(), ctap.Request{Cmd: ctap.CmdMsg, Payload: req})
		if err != nil {
			t.Fatalf("Handle returned an error: %v", err)
		}
		if len(resp) < 2 {
			t.Fatalf("response %x has no status word", resp)
		}
		sw := binary.BigEndian.Uint16(resp[len(resp)-2:])
		if !known[sw] {
			t.Fatalf("unexpected status word %04x", sw)
		}
		if sw != u2f.SWNoError && len(resp) != 2 {
			t.Fatalf("error %04x carries data %x", sw, resp)
		}
	})
}
