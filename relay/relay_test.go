package relay_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/relay"
	"github.com/tpm-fido/tpm-fido/test/logbuf"
	"github.com/tpm-fido/tpm-fido/test/otheruser"
	"github.com/tpm-fido/tpm-fido/transport"
)

// devices stands in for /dev/uhid: every OpenDevice makes a new
// in-memory device whose host side the test drives like libfido2 would.
type devices struct {
	mu     sync.Mutex
	opened int
	pipes  []*ctaphidtest.Pipe
	closed chan int // index of each closed device
}

type trackedDevice struct {
	*ctaphidtest.Device
	once  sync.Once
	close func()
}

func (d *trackedDevice) Close() error {
	d.once.Do(d.close)
	return nil
}

func newDevices() *devices { return &devices{closed: make(chan int, 16)} }

func (d *devices) open() (relay.Device, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	p := ctaphidtest.NewPipe()
	i := d.opened
	d.opened++
	d.pipes = append(d.pipes, p)
	return &trackedDevice{Device: p.Device(), close: func() { p.Close(); d.closed <- i }}, nil
}

func (d *devices) count() int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.opened
}

func (d *devices) host(i int) *ctaphidtest.Client {
	d.mu.Lock()
	defer d.mu.Unlock()
	return &ctaphidtest.Client{Conn: d.pipes[i].Host(5 * time.Second)}
}

// startRelay runs a relay serving the given users (file contents).
func startRelay(t *testing.T, users string) (sock string, devs *devices) {
	t.Helper()
	dir := t.TempDir()
	sock = filepath.Join(dir, "run", "relay.sock")
	usersFile := filepath.Join(dir, "relay-users")
	if err := os.WriteFile(usersFile, []byte(users), 0o644); err != nil {
		t.Fatal(err)
	}
	devs = newDevices()
	srv, err := relay.Listen(relay.Config{Socket: sock, UsersFile: usersFile, OpenDevice: devs.open})
	if err != nil {
		t.Fatal(err)
	}
	ctaphidtest.Serve(t, srv)
	return sock, devs
}

func waitClosed(t *testing.T, devs *devices, want int) {
	t.Helper()
	select {
	case i := <-devs.closed:
		if i != want {
			t.Fatalf("device %d closed, want %d", i, want)
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("device %d still exists after its daemon went", want)
	}
}

// TestRelayServesDaemon: a daemon of an allowed user gets a device, the
// full CTAPHID stack answers through it, a second daemon is refused while
// the first is connected, and the device goes when the daemon goes.
func TestRelayServesDaemon(t *testing.T) {
	sock, devs := startRelay(t, fmt.Sprintf("# the desktop user\n%d\n", os.Getuid()))
	if msg, err := relay.Probe(sock); err != nil || !strings.Contains(msg, "no daemon is connected") {
		t.Fatalf("probe: %q, %v", msg, err)
	}
	if devs.count() != 0 {
		t.Fatal("a probe created a device")
	}
	dev, err := transport.Open("relay:"+sock, nil)
	if err != nil {
		t.Fatal(err)
	}
	if devs.count() != 1 {
		t.Fatalf("%d devices after the daemon connected, want 1", devs.count())
	}
	ctx, cancel := context.WithCancel(context.Background())
	served := make(chan error, 1)
	go func() { served <- ctaphid.NewServer(dev, &ctap.Mux{}, ctaphid.Config{}).Serve(ctx) }()

	host := devs.host(0)
	cid, err := host.Init()
	if err != nil {
		t.Fatalf("INIT through the relay: %v", err)
	}
	data := bytes.Repeat([]byte{0x5A}, 1000)
	f, err := host.Transact(cid, ctaphid.CmdPing, data)
	if err != nil || !bytes.Equal(f.Payload, data) {
		t.Fatalf("PING through the relay: %v, %d bytes", err, len(f.Payload))
	}

	_, err = relay.Dial(sock)
	if !errors.Is(err, relay.ErrRefused) || !strings.Contains(err.Error(), fmt.Sprintf("already served by uid %d (pid %d)", os.Getuid(), os.Getpid())) {
		t.Fatalf("second daemon: %v", err)
	}
	if msg, err := relay.Probe(sock); err != nil || !strings.Contains(msg, "served by uid") {
		t.Fatalf("probe while serving: %q, %v", msg, err)
	}
	if devs.count() != 1 {
		t.Fatalf("%d devices, want 1", devs.count())
	}

	cancel()
	if err := <-served; err != nil {
		t.Fatalf("Serve: %v", err)
	}
	waitClosed(t, devs, 0)
	// The next daemon gets a new device (once the relay has finished
	// with the last one).
	var again *relay.Conn
	for i := 0; ; i++ {
		if again, err = relay.Dial(sock); err == nil || i == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	defer again.Close()
	if devs.count() != 2 {
		t.Fatalf("%d devices, want 2", devs.count())
	}
}

// TestRelayRefusesUsers: a user not in the list is refused and no device
// is made; the list is read at every connection.
func TestRelayRefusesUsers(t *testing.T) {
	sock, devs := startRelay(t, fmt.Sprintf("%d\nnosuchuser-tpm-fido\n", os.Getuid()+1))
	_, err := transport.Open("relay:"+sock, nil)
	if !errors.Is(err, relay.ErrRefused) || !strings.Contains(err.Error(), fmt.Sprintf("uid %d may not use the relay", os.Getuid())) {
		t.Fatalf("got %v", err)
	}
	if _, err := relay.Probe(sock); !errors.Is(err, relay.ErrRefused) {
		t.Fatalf("probe: %v", err)
	}
	if devs.count() != 0 {
		t.Fatalf("%d devices made for a refused user", devs.count())
	}
	users := filepath.Join(filepath.Dir(filepath.Dir(sock)), "relay-users")
	if err := os.WriteFile(users, []byte(fmt.Sprintf("%d\n", os.Getuid())), 0o644); err != nil {
		t.Fatal(err)
	}
	c, err := relay.Dial(sock)
	if err != nil {
		t.Fatalf("after the list changed: %v", err)
	}
	c.Close()
}

// TestRelayUsersByUID: the list's lines are uids with the user's name
// as a comment, as setup writes them, so users that only NSS knows
// (LDAP, sssd, systemd-homed; the relay, without cgo, reads only
// /etc/passwd) are served; a hand-written name that does not resolve is
// refused, and the relay logs which names it could not resolve.
func TestRelayUsersByUID(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "run", "relay.sock")
	users := filepath.Join(dir, "relay-users")
	var logs logbuf.Buffer
	srv, err := relay.Listen(relay.Config{Socket: sock, UsersFile: users, OpenDevice: newDevices().open,
		Logger: slog.New(slog.NewTextHandler(&logs, nil))})
	if err != nil {
		t.Fatal(err)
	}
	ctaphidtest.Serve(t, srv)
	write := func(content string) {
		t.Helper()
		if err := os.WriteFile(users, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	write("# written by setup\n70001 # ldapuser\nnosuchuser-tpm-fido   # hand-written\n")
	if _, err := relay.Probe(sock); !errors.Is(err, relay.ErrRefused) {
		t.Fatalf("probe of an unlisted uid: %v", err)
	}
	if l := logs.String(); !strings.Contains(l, "cannot resolve") || !strings.Contains(l, "nosuchuser-tpm-fido") || strings.Contains(l, "ldapuser") {
		t.Fatalf("the relay does not name the name it cannot resolve (and only that):\n%s", l)
	}
	write(fmt.Sprintf("70001 # ldapuser\n%d # a user only LDAP knows\n", os.Getuid()))
	c, err := relay.Dial(sock)
	if err != nil {
		t.Fatalf("a uid with a comment: %v", err)
	}
	c.Close()
}

// TestRelayWarnsOtherSeatUser: when logind's record names another user
// as active at a seat, the relay serves the daemon but logs that the
// key's node goes to that user; when the served user is the seat's, or
// there is no logind record, it says nothing of it.
func TestRelayWarnsOtherSeatUser(t *testing.T) {
	for _, c := range []struct {
		name  string
		seats map[string]string // file → content; nil: no seats directory
		warn  bool
	}{
		{"other user at the seat", map[string]string{"seat0": "IS_SEAT0=1\nCAN_GRAPHICAL=1\nACTIVE=c2\nACTIVE_UID=70001\nSESSIONS=c2 c1\nUIDS=70001 1000\n"}, true},
		{"served user at the seat", map[string]string{"seat0": fmt.Sprintf("IS_SEAT0=1\nACTIVE=c1\nACTIVE_UID=%d\n", os.Getuid()), "seat1": "ACTIVE_UID=70001\n"}, false},
		{"nobody at the seat", map[string]string{"seat0": "IS_SEAT0=1\nCAN_GRAPHICAL=1\n"}, false},
		{"no logind", nil, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			dir := t.TempDir()
			seats := filepath.Join(dir, "seats")
			if c.seats != nil {
				os.Mkdir(seats, 0o755)
				for n, content := range c.seats {
					if err := os.WriteFile(filepath.Join(seats, n), []byte(content), 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
			sock := filepath.Join(dir, "relay.sock")
			var logs logbuf.Buffer
			srv, err := relay.Listen(relay.Config{Socket: sock, Allow: []string{strconv.Itoa(os.Getuid())}, SeatsDir: seats,
				OpenDevice: newDevices().open, Logger: slog.New(slog.NewTextHandler(&logs, nil))})
			if err != nil {
				t.Fatal(err)
			}
			ctaphidtest.Serve(t, srv)
			conn, err := relay.Dial(sock)
			if err != nil {
				t.Fatalf("the daemon is not served: %v", err)
			}
			conn.Close()
			l := logs.String()
			if got := strings.Contains(l, "the user active at the seat is not the user whose daemon is served"); got != c.warn {
				t.Fatalf("warning logged: %v, want %v:\n%s", got, c.warn, l)
			}
			if c.warn && !strings.Contains(l, "seat0: uid 70001") {
				t.Fatalf("the warning does not name the seat's user:\n%s", l)
			}
		})
	}
}

// TestRelayTakesNoDeviceFromClient: the relay never takes a device
// description from its client: anything but the hello is refused before
// a device exists, and a packet larger than a report never reaches the
// device.
func TestRelayTakesNoDeviceFromClient(t *testing.T) {
	sock, devs := startRelay(t, fmt.Sprintf("%d\n", os.Getuid()))
	// A client that sends what it would send to /dev/uhid to create a
	// keyboard (a UHID_CREATE2 event: type 11, name, descriptor...).
	c, err := net.Dial("unixpacket", sock)
	if err != nil {
		t.Fatal(err)
	}
	create := make([]byte, 4376)
	create[0] = 11
	copy(create[4:], "evil keyboard")
	c.Write(create)
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 512)
	n, _ := c.Read(buf)
	c.Close()
	if !strings.HasPrefix(string(buf[:n]), "refused") {
		t.Fatalf("answer to a CREATE2 event: %q", buf[:n])
	}
	if devs.count() != 0 {
		t.Fatal("a device was made")
	}

	// A daemon speaking the protocol by hand: an oversized packet never
	// reaches the device, the next report does.
	raw, err := net.Dial("unixpacket", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer raw.Close()
	raw.Write([]byte("tpm-fido-relay/1 serve"))
	raw.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err = raw.Read(buf)
	if err != nil || string(buf[:n]) != "ok device created" {
		t.Fatalf("serve hello: %q %v", buf[:n], err)
	}
	host := devs.host(0)
	raw.Write(bytes.Repeat([]byte{1}, 200))
	report := bytes.Repeat([]byte{7}, 64)
	raw.Write(report)
	got := make([]byte, 300)
	n, err = host.Conn.ReadReport(got)
	if err != nil || !bytes.Equal(got[:n], report) {
		t.Fatalf("host got %d bytes %x, %v", n, got[:n], err)
	}
}

// TestRelayNotRunning: the daemon's error names the way out.
func TestRelayNotRunning(t *testing.T) {
	_, err := transport.Open("relay:"+filepath.Join(t.TempDir(), "relay.sock"), nil)
	if !errors.Is(err, relay.ErrNotRunning) || !strings.Contains(err.Error(), "systemctl enable --now tpm-fido-relay") {
		t.Fatalf("got %v", err)
	}
}

// TestRelayRefusesLiveSocket: a second relay does not take over the
// socket of a running one.
func TestRelayRefusesLiveSocket(t *testing.T) {
	sock, _ := startRelay(t, "")
	_, err := relay.Listen(relay.Config{Socket: sock, OpenDevice: newDevices().open})
	if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("another relay (pid %d)", os.Getpid())) {
		t.Fatalf("second relay: %v", err)
	}
	fi, err := os.Stat(sock)
	if err != nil || fi.Mode().Perm() != 0o666 {
		t.Fatalf("socket: %v %v", fi.Mode(), err)
	}
}

// TestRelayOtherUserProcess: the uid check with real processes: a daemon
// running as uid 65534 is refused when the list names only this test's
// user, and served once the list names 65534. Needs root.
func TestRelayOtherUserProcess(t *testing.T) {
	if sock := os.Getenv("TPM_FIDO_TEST_RELAY"); sock != "" {
		c, err := relay.Dial(sock)
		if err != nil {
			fmt.Println("dial:", err)
			return
		}
		c.Close()
		fmt.Println("served")
		return
	}
	if os.Geteuid() != 0 {
		t.Skip("needs root to run a daemon as another user")
	}
	sock, devs := startRelay(t, fmt.Sprintf("%d\n", os.Getuid()))
	for _, p := range []string{filepath.Dir(filepath.Dir(filepath.Dir(sock))), filepath.Dir(filepath.Dir(sock))} {
		os.Chmod(p, 0o755)
	}
	peer := otheruser.Copy(t)
	run := func() string {
		out, _ := peer.Run("TestRelayOtherUserProcess", "TPM_FIDO_TEST_RELAY="+sock)
		return string(out)
	}
	if out := run(); !strings.Contains(out, "uid 65534 may not use the relay") {
		t.Fatalf("uid 65534 not in the list:\n%s", out)
	}
	if devs.count() != 0 {
		t.Fatal("a device was made for uid 65534")
	}
	users := filepath.Join(filepath.Dir(filepath.Dir(sock)), "relay-users")
	if err := os.WriteFile(users, []byte("65534\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out := run(); !strings.Contains(out, "served") {
		t.Fatalf("uid 65534 in the list:\n%s", out)
	}
	waitClosed(t, devs, 0)
}

// lowFDRelay is TestRelaySurvivesFDExhaustion's child: a relay serving
// this uid with room for three more file descriptors, until stdin
// closes.
func lowFDRelay(sock string) {
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	srv, err := relay.Listen(relay.Config{Socket: sock, Allow: []string{strconv.Itoa(os.Getuid())}, OpenDevice: newDevices().open, Logger: log})
	if err != nil {
		fmt.Println("listen:", err)
		os.Exit(1)
	}
	ents, err := os.ReadDir("/proc/self/fd") // counts its own, closed again
	if err != nil {
		fmt.Println(err)
		os.Exit(1)
	}
	var lim syscall.Rlimit
	syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim)
	lim.Cur = uint64(len(ents) + 2)
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		fmt.Println("setrlimit:", err)
		os.Exit(1)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() {
		io.Copy(io.Discard, os.Stdin)
		cancel()
	}()
	fmt.Println("ready")
	if err := srv.Serve(ctx); err != nil {
		fmt.Println("serve:", err)
		os.Exit(1)
	}
	os.Exit(0)
}

// TestRelaySurvivesFDExhaustion: every local user may connect to the
// relay, so one that opens connections until the relay runs out of file
// descriptors must not end the service: the relay waits, accepts again
// once they are closed, and serves the next daemon.
func TestRelaySurvivesFDExhaustion(t *testing.T) {
	if sock := os.Getenv("TPM_FIDO_TEST_RELAY_LOWFD"); sock != "" {
		lowFDRelay(sock)
		return
	}
	sock := filepath.Join(t.TempDir(), "relay.sock")
	cmd := exec.Command(os.Args[0], "-test.run=^TestRelaySurvivesFDExhaustion$")
	cmd.Env = append(os.Environ(), "TPM_FIDO_TEST_RELAY_LOWFD="+sock)
	stdin, err := cmd.StdinPipe()
	if err != nil {
		t.Fatal(err)
	}
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr logbuf.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	var out []byte
	go func() {
		out, _ = io.ReadAll(stdout)
		cmd.Wait()
		close(exited)
	}()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
	})
	for i := 0; ; i++ {
		if _, err := os.Stat(sock); err == nil {
			break
		}
		if i == 500 {
			t.Fatalf("the relay did not start:\n%s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	time.Sleep(100 * time.Millisecond) // past the Setrlimit

	// Connections that never say hello, more than the relay has room for.
	var flood []net.Conn
	for i := range 20 {
		c, err := net.Dial("unixpacket", sock)
		if err != nil {
			t.Fatalf("flood connection %d: %v: the relay stopped listening\n%s", i, err, stderr.String())
		}
		flood = append(flood, c)
	}
	for i := 0; !strings.Contains(stderr.String(), "too many open files"); i++ {
		if i == 500 {
			t.Fatalf("the relay never ran out of file descriptors:\n%s", stderr.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
	for _, c := range flood {
		c.Close()
	}
	var c *relay.Conn
	for i := 0; ; i++ {
		if c, err = relay.Dial(sock); err == nil || i == 100 {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		select {
		case <-exited:
			t.Fatalf("the relay ended: %s%s", out, stderr.String())
		default:
		}
		t.Fatalf("a daemon after the flood: %v\n%s", err, stderr.String())
	}
	c.Close()
	stdin.Close()
	select {
	case <-exited:
		if cmd.ProcessState.ExitCode() != 0 {
			t.Fatalf("relay exit %d: %s%s", cmd.ProcessState.ExitCode(), out, stderr.String())
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the relay did not stop")
	}
}

// TestRelayBoundsWaitingConnections: connections that have not said
// hello yet are bounded per user, so no local user can make the relay
// hold a descriptor and a goroutine for every connection it opens; the
// bound frees up as hellos come, and a daemon is served again once the
// flood ends.
func TestRelayBoundsWaitingConnections(t *testing.T) {
	sock, devs := startRelay(t, fmt.Sprintf("%d\n", os.Getuid()))
	const n = 12
	var conns []net.Conn
	for range n {
		c, err := net.Dial("unixpacket", sock)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	time.Sleep(300 * time.Millisecond)
	var held []net.Conn
	buf := make([]byte, 512)
	for _, c := range conns {
		c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
		_, err := c.Read(buf)
		var ne net.Error
		switch {
		case errors.As(err, &ne) && ne.Timeout():
			held = append(held, c) // still waiting for its hello
		case !errors.Is(err, io.EOF):
			t.Fatalf("silent connection: %v", err)
		}
	}
	t.Logf("%d silent connections: the relay holds %d, closed %d", n, len(held), n-len(held))
	if len(held) != 4 {
		t.Fatalf("the relay holds %d silent connections of one user, want 4", len(held))
	}
	// A hello on a held connection is answered as ever.
	held[0].SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := held[0].Write([]byte("tpm-fido-relay/1 probe")); err != nil {
		t.Fatal(err)
	}
	if k, err := held[0].Read(buf); err != nil || !strings.HasPrefix(string(buf[:k]), "ok uid") {
		t.Fatalf("probe on a held connection: %q %v", buf[:k], err)
	}
	for _, c := range conns {
		c.Close()
	}
	var c *relay.Conn
	var err error
	for i := 0; ; i++ {
		if c, err = relay.Dial(sock); err == nil || i == 50 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("a daemon after the flood: %v", err)
	}
	c.Close()
	waitClosed(t, devs, 0)
}
