package ctaphid

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"log/slog"
	"testing"

	"github.com/tpm-fido/tpm-fido/ctap"
)

// recorder is a ReportDevice that records what the server writes.
type recorder struct{ out [][]byte }

func (r *recorder) ReadReport(p []byte) (int, error) { return 0, errors.New("recorder: no reads") }
func (r *recorder) WriteReport(p []byte) error {
	r.out = append(r.out, append([]byte(nil), p...))
	return nil
}
func (r *recorder) Close() error { return nil }

func FuzzParsePacket(f *testing.F) {
	f.Add(EncodeMessage(BroadcastCID, CmdInit, []byte{1, 2, 3, 4, 5, 6, 7, 8})[0])
	f.Add(EncodeMessage(1, CmdPing, make([]byte, 100))[1])
	f.Add([]byte{0, 0, 0, 1, 0x90})
	f.Fuzz(func(t *testing.T, p []byte) {
		pk, ok := parsePacket(p)
		if !ok {
			if len(p) >= 5 {
				t.Fatalf("rejected a %d-byte report", len(p))
			}
			return
		}
		var want [ReportSize]byte
		copy(want[:], p)
		// Re-encode the header and data; it must give the report back.
		got := make([]byte, 0, ReportSize)
		got = binary.BigEndian.AppendUint32(got, pk.cid)
		if pk.init {
			got = append(got, pk.cmd|initBit)
			got = binary.BigEndian.AppendUint16(got, uint16(pk.bcnt))
		} else {
			got = append(got, pk.seq)
		}
		got = append(got, pk.data...)
		if !bytes.Equal(got, want[:]) {
			t.Fatalf("round trip: % x != % x", got, want)
		}
	})
}

// FuzzServer feeds arbitrary report sequences to the protocol core with
// a handler that answers at once. It checks that the server never
// panics, that every report it writes is a well-formed 64-byte report,
// and that reassembly never overruns the announced length.
func FuzzServer(f *testing.F) {
	seed := func(msgs ...[][]byte) []byte {
		var b []byte
		for _, m := range msgs {
			for _, p := range m {
				b = append(b, p...)
			}
		}
		return b
	}
	initMsg := EncodeMessage(BroadcastCID, CmdInit, []byte{1, 2, 3, 4, 5, 6, 7, 8})
	f.Add(seed(initMsg, EncodeMessage(1, CmdPing, make([]byte, 200))))
	f.Add(seed(initMsg, EncodeMessage(1, CmdCBOR, []byte{4})))
	f.Add(seed(initMsg, EncodeMessage(1, CmdMsg, []byte{0, 3, 0, 0, 0})))
	f.Add(seed(initMsg, EncodeMessage(1, CmdLock, []byte{3}), EncodeMessage(2, CmdPing, nil)))
	f.Add(seed(initMsg, initMsg, EncodeMessage(1, CmdPing, make([]byte, 100))[:1], EncodeMessage(2, CmdPing, nil)))
	f.Add(seed(initMsg, EncodeMessage(1, CmdPing, make([]byte, MaxMessageSize))))
	f.Add(seed(initMsg, EncodeMessage(1, CmdCancel, nil), EncodeMessage(1, CmdWink, nil)))
	f.Fuzz(func(t *testing.T, data []byte) {
		rec := &recorder{}
		h := ctap.HandlerFunc(func(ctx context.Context, req ctap.Request) ([]byte, error) {
			if req.CID == 0 || req.CID == BroadcastCID || (req.Cmd != CmdMsg && req.Cmd != CmdCBOR) {
				t.Errorf("handler called for channel %08x, command 0x%02x", req.CID, req.Cmd)
			}
			p := req.Payload
			switch {
			case len(p) > 0 && p[0] == 0xEE:
				return nil, errors.New("handler failure")
			case len(p) > 0 && p[0] == 0xEF:
				return make([]byte, MaxMessageSize+1), nil
			}
			return append([]byte{0}, p...), nil
		})
		s := NewServer(rec, h, Config{Logger: slog.New(slog.DiscardHandler)})
		defer func() {
			close(s.done)
			s.dropAssembly()
			s.unlock()
			s.stopKeepalive()
			s.wg.Wait()
		}()
		for len(data) > 0 {
			n := min(len(data), ReportSize)
			if err := s.handleReport(data[:n]); err != nil {
				t.Fatal(err)
			}
			data = data[n:]
			if s.asm != nil && len(s.asm.buf) > s.asm.bcnt {
				t.Fatalf("reassembly overran: %d > %d", len(s.asm.buf), s.asm.bcnt)
			}
			if s.req != nil {
				if s.req.cid == 0 || s.req.cid == BroadcastCID {
					t.Fatalf("request on reserved channel %08x", s.req.cid)
				}
				if err := s.handleResult(<-s.results); err != nil {
					t.Fatal(err)
				}
				if s.req != nil || s.reqTick != nil {
					t.Fatal("request still outstanding after its result")
				}
			}
		}
		for _, p := range rec.out {
			if len(p) != ReportSize {
				t.Fatalf("wrote a %d-byte report", len(p))
			}
			if cid := binary.BigEndian.Uint32(p); p[4]&initBit != 0 && int(binary.BigEndian.Uint16(p[5:7])) > MaxMessageSize {
				t.Fatalf("response on %08x announces %d bytes", cid, binary.BigEndian.Uint16(p[5:7]))
			}
		}
	})
}
