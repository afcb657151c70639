package ctap_test

import (
	"bytes"
	"crypto/aes"
	"crypto/cipher"
	"crypto/ecdh"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/fxamacker/cbor/v2"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2"
	"github.com/tpm-fido/tpm-fido/ctap/ctap2/ctap2test"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/presence"
)

// stack is the CTAPHID server and the CTAP2 authenticator on a fake
// store, over an in-memory report pipe.
type stack struct {
	t     *testing.T
	store *ctap2test.FakeStore
	c     *ctaphidtest.Client
	cid   uint32
}

func newStack(t *testing.T) *stack {
	t.Helper()
	store := ctap2test.NewFakeStore(8)
	auth, err := ctap2.New(ctap2.Config{Store: store, Presence: presence.Fixed{Allow: true}})
	if err != nil {
		t.Fatal(err)
	}
	pipe := ctaphidtest.NewPipe()
	ctaphidtest.Serve(t, ctaphid.NewServer(pipe.Device(), &ctap.Mux{CBOR: auth}, ctaphid.Config{}))
	s := &stack{t: t, store: store, c: &ctaphidtest.Client{Conn: pipe.Host(5 * time.Second)}}
	if s.cid, err = s.c.Init(); err != nil {
		t.Fatal(err)
	}
	return s
}

var enc, _ = cbor.CTAP2EncOptions().EncMode()

// cbor sends a CTAP2 command and returns the status and response map.
func (s *stack) cbor(cmd byte, params map[int]any) (ctap.Status, map[int]cbor.RawMessage) {
	s.t.Helper()
	req := []byte{cmd}
	if params != nil {
		b, err := enc.Marshal(params)
		if err != nil {
			s.t.Fatal(err)
		}
		req = append(req, b...)
	}
	f, err := s.c.Transact(s.cid, ctaphid.CmdCBOR, req)
	if err != nil {
		s.t.Fatal(err)
	}
	if f.Cmd != ctaphid.CmdCBOR || len(f.Payload) == 0 {
		s.t.Fatalf("answer cmd 0x%02x % x", f.Cmd, f.Payload)
	}
	var m map[int]cbor.RawMessage
	if len(f.Payload) > 1 {
		if err := cbor.Unmarshal(f.Payload[1:], &m); err != nil {
			s.t.Fatal(err)
		}
	}
	return ctap.Status(f.Payload[0]), m
}

func hash(s string) []byte { h := sha256.Sum256([]byte(s)); return h[:] }

func makeCredential(rk bool, ext map[string]any) map[int]any {
	p := map[int]any{
		1: hash("mc"),
		2: map[string]any{"id": "example.com"},
		3: map[string]any{"id": []byte("uid"), "name": "alice"},
		4: []map[string]any{{"type": "public-key", "alg": -7}},
	}
	if rk {
		p[7] = map[string]bool{"rk": true}
	}
	if ext != nil {
		p[6] = ext
	}
	return p
}

// TestStrictChoices checks each deliberate strict answer listed in
// docs/interop.md ("Where the daemon is strict, on purpose") through the
// CTAPHID server and the CTAP2 handler, and that the table still lists
// it with its answer.
func TestStrictChoices(t *testing.T) {
	doc, err := os.ReadFile("../docs/interop.md")
	if err != nil {
		t.Fatal(err)
	}
	table := string(doc)
	if i := strings.Index(table, "## Where the daemon is strict, on purpose"); i < 0 {
		t.Fatal(`docs/interop.md has no "Where the daemon is strict, on purpose" section`)
	} else {
		table = table[i:]
		if j := strings.Index(table[3:], "\n## "); j >= 0 {
			table = table[:j+3]
		}
	}
	for _, tc := range []struct {
		row, answer string // the table row's first cell, and text its answer cell has
		check       func(t *testing.T, s *stack)
	}{
		{"a request on a channel INIT never allocated", "`ERR_INVALID_CHANNEL` (0x0B)", func(t *testing.T, s *stack) {
			f, err := s.c.Transact(s.cid+1000, ctaphid.CmdCBOR, []byte{0x04})
			if err != nil {
				t.Fatal(err)
			}
			if f.Cmd != ctaphid.CmdError || !bytes.Equal(f.Payload, []byte{ctaphid.ErrInvalidChannel}) {
				t.Errorf("cmd 0x%02x % x, want ERROR 0b", f.Cmd, f.Payload)
			}
		}},
		{"pinUvAuthProtocols", "`[2, 1]`", func(t *testing.T, s *stack) {
			st, m := s.cbor(0x04, nil)
			var protos []int
			if st != ctap.StatusOK || cbor.Unmarshal(m[0x06], &protos) != nil || len(protos) != 2 || protos[0] != 2 || protos[1] != 1 {
				t.Errorf("getInfo %v: pinUvAuthProtocols %v, want [2 1]", st, protos)
			}
		}},
		{"makeCredUvNotRqd", "`PUAT_REQUIRED` (0x36)", func(t *testing.T, s *stack) {
			_, m := s.cbor(0x04, nil)
			var opts map[string]bool
			if cbor.Unmarshal(m[0x04], &opts) != nil || !opts["makeCredUvNotRqd"] {
				t.Errorf("getInfo options %v lack makeCredUvNotRqd", opts)
			}
			if err := s.store.SetPIN([16]byte(hash("1234")[:16])); err != nil {
				t.Fatal(err)
			}
			if st, _ := s.cbor(0x01, makeCredential(false, nil)); st != ctap.StatusOK {
				t.Errorf("non-discoverable without a token, PIN set: %v", st)
			}
			if st, _ := s.cbor(0x01, makeCredential(true, nil)); st != ctap.StatusPUATRequired {
				t.Errorf("discoverable without a token, PIN set: %v, want PUAT_REQUIRED", st)
			}
		}},
		{"credProtect 3 (`verify-required`) without UV", "`CTAP2_ERR_PIN_NOT_SET` (0x35)", func(t *testing.T, s *stack) {
			level3 := map[string]any{"credProtect": 3}
			if st, _ := s.cbor(0x01, makeCredential(false, level3)); st != ctap.StatusPINNotSet {
				t.Errorf("credProtect 3, no PIN: %v, want PIN_NOT_SET", st)
			}
			if err := s.store.SetPIN([16]byte(hash("1234")[:16])); err != nil {
				t.Fatal(err)
			}
			if st, _ := s.cbor(0x01, makeCredential(false, level3)); st != ctap.StatusPUATRequired {
				t.Errorf("credProtect 3, non-discoverable, PIN set, no token: %v, want PUAT_REQUIRED", st)
			}
			if st, _ := s.cbor(0x01, makeCredential(false, map[string]any{"credProtect": 2})); st != ctap.StatusOK {
				t.Errorf("credProtect 2, non-discoverable, PIN set, no token: %v", st)
			}
		}},
		{"`rk` option in getAssertion", "`CTAP2_ERR_UNSUPPORTED_OPTION` (0x2B)", func(t *testing.T, s *stack) {
			st, _ := s.cbor(0x02, map[int]any{1: "example.com", 2: hash("ga"), 5: map[string]bool{"rk": true}})
			if st != ctap.StatusUnsupportedOption {
				t.Errorf("%v, want UNSUPPORTED_OPTION", st)
			}
		}},
		{"setPIN while a PIN is set", "`CTAP2_ERR_PIN_AUTH_INVALID` (0x33)", func(t *testing.T, s *stack) {
			setPIN := func() ctap.Status {
				p := s.protocolOne()
				newPinEnc := p.encrypt(append([]byte("1234"), make([]byte, 60)...))
				st, _ := s.cbor(0x06, map[int]any{1: 1, 2: 0x03, 3: p.key, 4: p.authenticate(newPinEnc), 5: newPinEnc})
				return st
			}
			if st := setPIN(); st != ctap.StatusOK {
				t.Fatalf("first setPIN: %v", st)
			}
			if st := setPIN(); st != ctap.StatusPINAuthInvalid {
				t.Errorf("second, well-formed setPIN: %v, want PIN_AUTH_INVALID", st)
			}
		}},
		{"hmac-secret with a saltAuth that does not verify", "`CTAP2_ERR_PIN_AUTH_INVALID` (0x33)", func(t *testing.T, s *stack) {
			st, m := s.cbor(0x01, makeCredential(false, map[string]any{"hmac-secret": true}))
			if st != ctap.StatusOK {
				t.Fatalf("makeCredential: %v", st)
			}
			var authData []byte
			if err := cbor.Unmarshal(m[2], &authData); err != nil || len(authData) < 55 {
				t.Fatalf("authData: %v", err)
			}
			idLen := int(authData[53])<<8 | int(authData[54])
			id := authData[55 : 55+idLen]
			get := func(flip byte) ctap.Status {
				p := s.protocolOne()
				saltEnc := p.encrypt(hash("salt"))
				saltAuth := p.authenticate(saltEnc)
				saltAuth[0] ^= flip
				st, _ := s.cbor(0x02, map[int]any{1: "example.com", 2: hash("ga"),
					3: []map[string]any{{"type": "public-key", "id": id}},
					4: map[string]any{"hmac-secret": map[int]any{1: p.key, 2: saltEnc, 3: saltAuth, 4: 1}}})
				return st
			}
			if st := get(0); st != ctap.StatusOK {
				t.Fatalf("hmac-secret with a good saltAuth: %v", st)
			}
			if st := get(1); st != ctap.StatusPINAuthInvalid {
				t.Errorf("hmac-secret with a flipped saltAuth bit: %v, want PIN_AUTH_INVALID", st)
			}
		}},
	} {
		t.Run(tc.row, func(t *testing.T) {
			tc.check(t, newStack(t))
			var line string
			for _, l := range strings.Split(table, "\n") {
				if strings.HasPrefix(l, "| "+tc.row+" |") {
					line = l
				}
			}
			if line == "" {
				t.Fatalf("docs/interop.md's strict-choices table has no row %q", tc.row)
			}
			if !strings.Contains(line, tc.answer) || !strings.Contains(line, "§") {
				t.Errorf("docs/interop.md row %q does not give the answer %s and its clause:\n%s", tc.row, tc.answer, line)
			}
		})
	}
}

// platformOne is the platform half of PIN/UV auth protocol 1 (CTAP 2.1
// §6.5.6), written here from the specification: ECDH with the
// authenticator's key-agreement key, shared secret SHA-256(Z),
// AES-256-CBC with a zero IV, LEFT(HMAC-SHA-256, 16).
type platformOne struct {
	t      *testing.T
	key    map[int]any // the platform's key-agreement key, COSE
	shared []byte
}

func (s *stack) protocolOne() platformOne {
	s.t.Helper()
	st, m := s.cbor(0x06, map[int]any{1: 1, 2: 0x02})
	var ka map[int]any
	if st != ctap.StatusOK || cbor.Unmarshal(m[1], &ka) != nil {
		s.t.Fatalf("getKeyAgreement: %v", st)
	}
	x, _ := ka[-2].([]byte)
	y, _ := ka[-3].([]byte)
	peer, err := ecdh.P256().NewPublicKey(append(append([]byte{4}, x...), y...))
	if err != nil {
		s.t.Fatal(err)
	}
	k, err := ecdh.P256().GenerateKey(rand.Reader)
	if err != nil {
		s.t.Fatal(err)
	}
	z, err := k.ECDH(peer)
	if err != nil {
		s.t.Fatal(err)
	}
	shared := sha256.Sum256(z)
	pub := k.PublicKey().Bytes()
	return platformOne{
		t:      s.t,
		key:    map[int]any{1: 2, 3: -25, -1: 1, -2: pub[1:33], -3: pub[33:]},
		shared: shared[:],
	}
}

func (p platformOne) encrypt(plain []byte) []byte {
	b, err := aes.NewCipher(p.shared)
	if err != nil {
		p.t.Fatal(err)
	}
	out := make([]byte, len(plain))
	cipher.NewCBCEncrypter(b, make([]byte, aes.BlockSize)).CryptBlocks(out, plain)
	return out
}

func (p platformOne) authenticate(msg []byte) []byte {
	h := hmac.New(sha256.New, p.shared)
	h.Write(msg)
	return h.Sum(nil)[:16]
}
