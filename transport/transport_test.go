package transport

import (
	"bytes"
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
)

func serve(t *testing.T, dev ctaphid.ReportDevice) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	srv := ctaphid.NewServer(dev, &ctap.Mux{}, ctaphid.Config{})
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-errc; err != nil {
			t.Errorf("Serve: %v", err)
		}
	})
}

func dialUnix(t *testing.T, path string) *ctaphidtest.Client {
	t.Helper()
	c, err := net.Dial("unixpacket", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return &ctaphidtest.Client{Conn: ctaphidtest.NetConn(c, 5*time.Second)}
}

func TestUnix(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	dev, err := Open("unix:"+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode %v, want 0600", fi.Mode().Perm())
	}
	serve(t, dev)
	a, b := dialUnix(t, path), dialUnix(t, path)
	cidA, err := a.Init()
	if err != nil {
		t.Fatal(err)
	}
	// Every report reaches every client, like hidraw: b sees a's INIT
	// answer on the broadcast channel, then its own.
	if f, err := b.Recv(); err != nil || f.Cmd != ctaphid.CmdInit {
		t.Fatalf("second client did not see the broadcast answer: %v %v", f, err)
	}
	cidB, err := b.Init()
	if err != nil {
		t.Fatal(err)
	}
	if cidA == cidB {
		t.Fatalf("both clients got channel %08x", cidA)
	}
	data := bytes.Repeat([]byte{0x5A}, ctaphid.MaxMessageSize)
	f, err := b.Transact(cidB, ctaphid.CmdPing, data)
	if err != nil || f.Cmd != ctaphid.CmdPing || !bytes.Equal(f.Payload, data) {
		t.Fatalf("PING over unix: %v cmd 0x%02x len %d", err, f.Cmd, len(f.Payload))
	}
	// a skips b's traffic (other channels) and still gets its answers.
	f, err = a.Transact(cidA, ctaphid.CmdCBOR, []byte{0x04})
	if err != nil || f.Cmd != ctaphid.CmdCBOR || !bytes.Equal(f.Payload, []byte{0x01}) {
		t.Fatalf("CBOR over unix: %v cmd 0x%02x % x", err, f.Cmd, f.Payload)
	}
}

func TestUnixRefusesNonSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(path, []byte("keep me"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Open("unix:"+path, nil); err == nil {
		t.Fatal("listening over a regular file succeeded")
	}
	if b, _ := os.ReadFile(path); string(b) != "keep me" {
		t.Error("regular file was clobbered")
	}
}

func TestUnixCloseRemovesSocket(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	u, err := ListenUnix(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("unixpacket", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan error, 1)
	go func() {
		_, err := u.ReadReport(make([]byte, 64))
		done <- err
	}()
	if err := u.Close(); err != nil {
		t.Fatal(err)
	}
	if err := <-done; !errors.Is(err, net.ErrClosed) {
		t.Errorf("read after close: %v", err)
	}
	if _, err := os.Stat(path); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("socket still there: %v", err)
	}
}

func freeUDPPort(t *testing.T) string {
	t.Helper()
	c, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	addr := c.LocalAddr().String()
	c.Close()
	return addr
}

func TestUDP(t *testing.T) {
	client, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	listen := freeUDPPort(t)
	dev, err := Open("udp:"+listen+","+client.LocalAddr().String(), nil)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, dev)
	raddr, _ := net.ResolveUDPAddr("udp", listen)
	c := &ctaphidtest.Client{Conn: udpConn{client, raddr}}
	cid, err := c.Init()
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{0xA5}, 300)
	f, err := c.Transact(cid, ctaphid.CmdPing, data)
	if err != nil || !bytes.Equal(f.Payload, data) {
		t.Fatalf("PING over udp: %v len %d", err, len(f.Payload))
	}
}

type udpConn struct {
	c  *net.UDPConn
	to *net.UDPAddr
}

func (u udpConn) WriteReport(p []byte) error { _, err := u.c.WriteToUDP(p, u.to); return err }
func (u udpConn) ReadReport(p []byte) (int, error) {
	u.c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, _, err := u.c.ReadFromUDP(p)
	return n, err
}

func TestUDPLoopbackOnly(t *testing.T) {
	for _, spec := range []string{
		"udp:0.0.0.0:8111,127.0.0.1:7112",
		"udp:127.0.0.1:8111,192.0.2.1:7112",
		"udp:[::]:8111,127.0.0.1:7112",
	} {
		if _, err := Open(spec, nil); !errors.Is(err, ErrNotLoopback) {
			t.Errorf("%s: got %v, want ErrNotLoopback", spec, err)
		}
	}
}

func TestBadSpec(t *testing.T) {
	for _, spec := range []string{"", "usb", "unix:", "tcp:1"} {
		if _, err := Open(spec, nil); !errors.Is(err, ErrBadSpec) {
			t.Errorf("%q: got %v, want ErrBadSpec", spec, err)
		}
	}
	if _, err := Open("udp:nonsense", nil); err == nil {
		t.Error("udp:nonsense accepted")
	}
}

func TestUhidMissingNamesFix(t *testing.T) {
	if _, err := os.Stat("/dev/uhid"); err == nil {
		t.Skip("/dev/uhid exists")
	}
	_, err := Open("uhid", nil)
	if err == nil || !bytes.Contains([]byte(err.Error()), []byte("modprobe uhid")) {
		t.Fatalf("got %v, want an error naming modprobe uhid", err)
	}
}

// BenchmarkUnixPingMax is the round trip of a 7609-byte PING (129
// reports each way) through the unix SOCK_SEQPACKET transport.
func BenchmarkUnixPingMax(b *testing.B) {
	path := filepath.Join(b.TempDir(), "s")
	dev, err := ListenUnix(path, nil)
	if err != nil {
		b.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	srv := ctaphid.NewServer(dev, &ctap.Mux{}, ctaphid.Config{})
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ctx) }()
	defer func() { cancel(); <-errc }()
	conn, err := net.Dial("unixpacket", path)
	if err != nil {
		b.Fatal(err)
	}
	defer conn.Close()
	c := &ctaphidtest.Client{Conn: ctaphidtest.NetConn(conn, 5*time.Second)}
	cid, err := c.Init()
	if err != nil {
		b.Fatal(err)
	}
	data := bytes.Repeat([]byte{0x42}, ctaphid.MaxMessageSize)
	b.SetBytes(int64(len(data)))
	for b.Loop() {
		f, err := c.Transact(cid, ctaphid.CmdPing, data)
		if err != nil || len(f.Payload) != len(data) {
			b.Fatalf("PING: %v len %d", err, len(f.Payload))
		}
	}
}

// TestUnixStalledClient: a client that never reads is dropped and does
// not block the others.
func TestUnixStalledClient(t *testing.T) {
	path := filepath.Join(t.TempDir(), "s")
	dev, err := ListenUnix(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, dev)
	stalled, err := net.Dial("unixpacket", path)
	if err != nil {
		t.Fatal(err)
	}
	defer stalled.Close()
	c := dialUnix(t, path)
	cid, err := c.Init()
	if err != nil {
		t.Fatal(err)
	}
	data := bytes.Repeat([]byte{1}, ctaphid.MaxMessageSize)
	for i := 0; i < 40; i++ { // far more than a socket buffer holds
		f, err := c.Transact(cid, ctaphid.CmdPing, data)
		if err != nil || len(f.Payload) != len(data) {
			t.Fatalf("PING %d: %v", i, err)
		}
	}
}
