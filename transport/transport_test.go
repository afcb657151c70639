package transport

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/test/otheruser"
)

func serve(t *testing.T, dev ctaphid.ReportDevice) {
	t.Helper()
	ctaphidtest.Serve(t, ctaphid.NewServer(dev, &ctap.Mux{}, ctaphid.Config{}))
}

// sockPath is a socket path in a directory ListenUnix creates (0700):
// t.TempDir itself is open to others (0755).
func sockPath(t *testing.T) string {
	return filepath.Join(t.TempDir(), "run", "s")
}

func dialUnix(t *testing.T, path string) *ctaphidtest.Client {
	t.Helper()
	c, err := ctaphidtest.DialUnix(path, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func TestUnix(t *testing.T) {
	path := sockPath(t)
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
	// b's own INIT answer shows that the server has accepted b's
	// connection (a dial returns before that), so b gets every report
	// from now on.
	cidB, err := b.Init()
	if err != nil {
		t.Fatal(err)
	}
	cidA, err := a.Init()
	if err != nil {
		t.Fatal(err)
	}
	// Every report reaches every client, like hidraw: b sees a's INIT
	// answer on the broadcast channel.
	if f, err := b.Recv(); err != nil || f.Cmd != ctaphid.CmdInit || f.CID != ctaphid.BroadcastCID {
		t.Fatalf("second client did not see the broadcast answer: %v %v", f, err)
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
	dir := t.TempDir()
	if err := os.Chmod(dir, 0o700); err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "file")
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
	path := sockPath(t)
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

func TestUDP(t *testing.T) {
	spec, c, err := ctaphidtest.LoopbackUDP(5 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	dev, err := Open(spec, nil)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, dev)
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
	path := filepath.Join(b.TempDir(), "run", "s")
	dev, err := ListenUnix(path, nil)
	if err != nil {
		b.Fatal(err)
	}
	defer ctaphidtest.Serve(b, ctaphid.NewServer(dev, &ctap.Mux{}, ctaphid.Config{}))()
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
	path := sockPath(t)
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

// TestUnixDirectoryMustBePrivate: the socket's directory is created 0700
// when missing, and a directory others can enter is refused before any
// socket is made.
func TestUnixDirectoryMustBePrivate(t *testing.T) {
	base := t.TempDir()
	fresh := filepath.Join(base, "new", "sub")
	u, err := ListenUnix(filepath.Join(fresh, "s"), nil)
	if err != nil {
		t.Fatal(err)
	}
	u.Close()
	if fi, err := os.Stat(fresh); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("created directory: %v, mode %v; want 0700", err, fi.Mode().Perm())
	}
	for _, mode := range []os.FileMode{0o755, 0o750, 0o701, 0o1777} {
		dir := filepath.Join(base, fmt.Sprintf("open%o", mode))
		if err := os.Mkdir(dir, 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(dir, mode); err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, "s")
		_, err := ListenUnix(path, nil)
		if !errors.Is(err, ErrUnsafeDir) || !strings.Contains(err.Error(), dir) {
			t.Errorf("directory mode %04o: got %v, want ErrBadSpec naming %s", mode, err, dir)
		}
		if _, err := os.Lstat(path); !errors.Is(err, os.ErrNotExist) {
			t.Errorf("directory mode %04o: a socket was created anyway", mode)
		}
	}
}

// TestUnixRefusesLiveSocket: a second listener on the path of a live one
// fails, names the first one's pid, and leaves it serving.
func TestUnixRefusesLiveSocket(t *testing.T) {
	path := sockPath(t)
	first, err := ListenUnix(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, first)
	_, err = ListenUnix(path, nil)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Fatalf("second listener: got %v, want ErrInUse naming pid %d", err, os.Getpid())
	}
	// A live socket not guarded by our lock file (another program, or a
	// daemon whose lock file was removed) is refused all the same.
	if err := os.Remove(path + ".lock"); err != nil {
		t.Fatal(err)
	}
	_, err = ListenUnix(path, nil)
	if !errors.Is(err, ErrInUse) || !strings.Contains(err.Error(), fmt.Sprintf("pid %d", os.Getpid())) {
		t.Fatalf("without the lock file: got %v, want ErrInUse naming pid %d", err, os.Getpid())
	}
	c := dialUnix(t, path)
	cid, err := c.Init()
	if err != nil {
		t.Fatalf("the first listener stopped serving: %v", err)
	}
	if f, err := c.Transact(cid, ctaphid.CmdPing, []byte("still here")); err != nil || string(f.Payload) != "still here" {
		t.Fatalf("PING to the first listener: %v %q", err, f.Payload)
	}
}

// TestUnixReplacesStaleSocket: a socket nobody listens on any more (a
// daemon that was killed) is replaced.
func TestUnixReplacesStaleSocket(t *testing.T) {
	path := sockPath(t)
	if err := os.Mkdir(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	ln, err := net.ListenUnix("unixpacket", &net.UnixAddr{Name: path, Net: "unixpacket"})
	if err != nil {
		t.Fatal(err)
	}
	ln.SetUnlinkOnClose(false)
	ln.Close()
	if _, err := os.Lstat(path); err != nil {
		t.Fatalf("no stale socket to test with: %v", err)
	}
	u, err := ListenUnix(path, nil)
	if err != nil {
		t.Fatalf("stale socket not replaced: %v", err)
	}
	serve(t, u)
	if _, err := dialUnix(t, path).Init(); err != nil {
		t.Fatal(err)
	}
}

// TestUnixRefusesOtherUID: a connection whose peer uid is not the
// listener's is closed without an answer (the check is what matters
// here, so the test pretends to be another user; TestUnixOtherUserProcess
// does it with a real one).
func TestUnixRefusesOtherUID(t *testing.T) {
	path := sockPath(t)
	u, err := listenUnix(path, nil, os.Geteuid()+1)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, u)
	c, err := net.Dial("unixpacket", path)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	expectRefused(t, c)
}

// expectRefused sends an INIT on c and wants the connection closed
// without any answer.
func expectRefused(t *testing.T, c net.Conn) {
	t.Helper()
	init := make([]byte, ctaphid.ReportSize)
	binary.BigEndian.PutUint32(init, ctaphid.BroadcastCID)
	init[4] = ctaphid.CmdInit
	init[6] = 8
	copy(init[7:], "12345678")
	c.Write(init) // may fail once the server has closed
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := c.Read(make([]byte, 128))
	if err == nil && n > 0 {
		t.Fatalf("a client of another uid got a %d-byte answer", n)
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		t.Fatal("the connection of another uid was left open")
	}
}

// TestUnixOtherUserProcess: a process of another user that gets past the
// file permissions (here: the test opens them up) is still refused by
// the peer-uid check. Needs root to start a process as nobody.
func TestUnixOtherUserProcess(t *testing.T) {
	if path := os.Getenv("TPM_FIDO_TEST_PEER_SOCKET"); path != "" {
		// The child: connect and report what happened on stdout.
		c, err := net.Dial("unixpacket", path)
		if err != nil {
			fmt.Println("dial:", err)
			os.Exit(3)
		}
		expectRefused(t, c)
		if !t.Failed() {
			fmt.Println("refused")
		}
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a client as another user")
	}
	path := sockPath(t)
	dir := filepath.Dir(path)
	u, err := ListenUnix(path, nil)
	if err != nil {
		t.Fatal(err)
	}
	serve(t, u)
	// Let uid 65534 reach the socket: only the peer check stands now.
	for _, p := range []string{filepath.Dir(filepath.Dir(dir)), filepath.Dir(dir), dir} {
		if err := os.Chmod(p, 0o711); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Chmod(path, 0o666); err != nil {
		t.Fatal(err)
	}
	out, err := otheruser.Copy(t).Run("TestUnixOtherUserProcess", "TPM_FIDO_TEST_PEER_SOCKET="+path)
	if err != nil || !strings.Contains(string(out), "refused") {
		t.Fatalf("client as uid 65534: %v\n%s", err, out)
	}
	// The same socket still serves its owner.
	if _, err := dialUnix(t, path).Init(); err != nil {
		t.Fatal(err)
	}
}
