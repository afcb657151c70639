package ctaphid_test

import (
	"bytes"
	"testing"

	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
)

// BenchmarkPingMax is the round trip of a 7609-byte PING (129 reports
// each way) over the in-memory pipe.
func BenchmarkPingMax(b *testing.B) {
	e := start(b, nil, ctaphid.Config{}, nil)
	cid, err := e.client.Init()
	if err != nil {
		b.Fatal(err)
	}
	data := bytes.Repeat([]byte{0x42}, ctaphid.MaxMessageSize)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		f, err := e.client.Transact(cid, ctaphid.CmdPing, data)
		if err != nil || len(f.Payload) != len(data) {
			b.Fatalf("PING: %v len %d", err, len(f.Payload))
		}
	}
}
