package security_test

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"testing"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/presence"
)

// apdu frames an extended-length U2F request (FIDO U2F raw messages §3).
func apdu(ins, p1 byte, data []byte) []byte {
	b := []byte{0, ins, p1, 0, 0}
	b = binary.BigEndian.AppendUint16(b, uint16(len(data)))
	b = append(b, data...)
	return append(b, 0, 0)
}

// U2F: with the prompt answering no, REGISTER and AUTHENTICATE (enforce
// presence) never return 0x9000 however often the client polls, and the
// prompt was asked.
func TestU2FPresenceNeedsYes(t *testing.T) {
	e := newEnv(t, envOpts{})
	ch := e.channel()
	id := makeCred(t, ch, "a.example")
	if len(id) > 255 {
		t.Fatalf("credential ID of %d bytes cannot be a U2F key handle", len(id))
	}
	app := sha256.Sum256([]byte("a.example"))
	chal := sha256.Sum256([]byte("challenge"))
	auth := append(append(append(chal[:0:0], chal[:]...), app[:]...), byte(len(id)))
	auth = append(auth, id...)
	reqs := map[string][]byte{
		"REGISTER":             apdu(0x01, 0, append(chal[:], app[:]...)),
		"AUTHENTICATE enforce": apdu(0x02, 0x03, auth),
	}
	// Control: with a yes, AUTHENTICATE succeeds (after polling).
	if sw := pollU2F(t, ch, reqs["AUTHENTICATE enforce"]); sw != 0x9000 {
		t.Fatalf("AUTHENTICATE with a yes: SW %04x", sw)
	}
	e.prompt.set(func(ctx context.Context) error { return presence.Fixed{Allow: false}.Confirm(ctx, presence.Request{}) })
	for name, req := range reqs {
		before := e.prompt.count()
		if sw := pollU2F(t, ch, req); sw == 0x9000 {
			t.Errorf("%s succeeded without a yes", name)
		} else if sw != 0x6985 {
			t.Errorf("%s: SW %04x, want 6985 (conditions not satisfied)", name, sw)
		}
		if e.prompt.count() == before {
			t.Errorf("%s refused without asking the prompt", name)
		}
	}
}

// pollU2F sends req until it returns something other than 6985 or
// 20 polls (100 ms apart, as U2F clients poll) have passed; it returns
// the last status word.
func pollU2F(t *testing.T, ch *ctaphidtest.Channel, req []byte) uint16 {
	t.Helper()
	var sw uint16
	for range 20 {
		f, err := ch.C.Transact(ch.CID, ctaphid.CmdMsg, req)
		if err != nil {
			t.Fatal(err)
		}
		if f.Cmd != ctaphid.CmdMsg || len(f.Payload) < 2 {
			t.Fatalf("U2F response cmd 0x%02x % x", f.Cmd, f.Payload)
		}
		sw = binary.BigEndian.Uint16(f.Payload[len(f.Payload)-2:])
		if sw != 0x6985 {
			return sw
		}
		time.Sleep(100 * time.Millisecond)
	}
	return sw
}
