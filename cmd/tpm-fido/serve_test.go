package main

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/rogpeppe/go-internal/testscript"

	"github.com/tpm-fido/tpm-fido/ctap/ctaphid"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/relay"
	"github.com/tpm-fido/tpm-fido/test/daemontest"
	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// serveTestArgs are the flags every serve test passes besides
// --transport. Extra ones come from $TPM_FIDO_SERVE_TEST_ARGS
// (space-separated), e.g. "--tpm simulator" once the handler is wired
// to a TPM.
func serveTestArgs(t *testing.T) []string {
	args := []string{"--state-dir", t.TempDir(), "--tpm", "simulator", "--presence", "always-allow", "--insecure-test-mode", "--log-level", "debug"}
	return append(args, strings.Fields(os.Getenv("TPM_FIDO_SERVE_TEST_ARGS"))...)
}

// TestMain also lets the test binary act as the tpm-fido command for the
// testscripts (script_test.go).
func TestMain(m *testing.M) {
	testscript.Main(removeBuild{m}, map[string]func(){
		"tpm-fido": func() { os.Exit(run(os.Args[1:], os.Stdout, os.Stderr)) },
	})
}

// removeBuild runs the tests, then removes the daemon daemontest built.
type removeBuild struct{ m *testing.M }

func (r removeBuild) Run() int {
	code := r.m.Run()
	daemontest.Cleanup()
	return code
}

// daemonBinary is the tpm-fido binary (daemontest.Binary).
func daemonBinary(t *testing.T) string { return daemontest.Binary(t) }

// startDaemon runs `tpm-fido serve` with args until READY=1
// (daemontest.Start); stop ends it and returns its exit code and
// standard error.
func startDaemon(t *testing.T, args ...string) (stop func() (exitCode int, stderr string)) {
	t.Helper()
	return daemontest.Start(t, args...).Stop
}

// probe runs the transport probes the acceptance list names.
func probe(t *testing.T, c *ctaphidtest.Client) {
	t.Helper()
	cid, err := c.Init()
	if err != nil {
		t.Fatalf("INIT: %v", err)
	}
	for _, n := range []int{0, 57, 58, ctaphid.MaxMessageSize} {
		data := bytes.Repeat([]byte{byte(n)}, n)
		f, err := c.Transact(cid, ctaphid.CmdPing, data)
		if err != nil || f.Cmd != ctaphid.CmdPing || !bytes.Equal(f.Payload, data) {
			t.Fatalf("PING %d: %v cmd 0x%02x len %d", n, err, f.Cmd, len(f.Payload))
		}
	}
	// Only the init packet of an over-long message is needed.
	over := make([]byte, ctaphid.ReportSize)
	copy(over, []byte{byte(cid >> 24), byte(cid >> 16), byte(cid >> 8), byte(cid), 0x81, 0x1D, 0xBA})
	if err := c.Conn.WriteReport(over); err != nil {
		t.Fatal(err)
	}
	f, err := c.RecvOn(cid)
	if err != nil || f.Cmd != ctaphid.CmdError || !bytes.Equal(f.Payload, []byte{ctaphid.ErrInvalidLen}) {
		t.Fatalf("PING 7610: %v cmd 0x%02x % x, want ERROR INVALID_LEN", err, f.Cmd, f.Payload)
	}
	f, err = c.Transact(cid, 0x2A, nil)
	if err != nil || f.Cmd != ctaphid.CmdError || !bytes.Equal(f.Payload, []byte{ctaphid.ErrInvalidCmd}) {
		t.Fatalf("unknown command: %v cmd 0x%02x % x, want ERROR INVALID_CMD", err, f.Cmd, f.Payload)
	}
	f, err = c.Transact(cid+1000, ctaphid.CmdPing, []byte{1})
	if err != nil || f.Cmd != ctaphid.CmdError || !bytes.Equal(f.Payload, []byte{ctaphid.ErrInvalidChannel}) {
		t.Fatalf("unallocated channel: %v cmd 0x%02x % x, want ERROR INVALID_CHANNEL", err, f.Cmd, f.Payload)
	}
	// authenticatorGetInfo: whatever the handler is, it answers with a
	// CTAP status byte first, never silence.
	f, err = c.Transact(cid, ctaphid.CmdCBOR, []byte{0x04})
	if err != nil || f.Cmd != ctaphid.CmdCBOR || len(f.Payload) < 1 {
		t.Fatalf("getInfo: %v cmd 0x%02x % x", err, f.Cmd, f.Payload)
	}
	t.Logf("getInfo status 0x%02x, %d bytes", f.Payload[0], len(f.Payload))
	// U2F VERSION: an APDU answer ending in a status word.
	f, err = c.Transact(cid, ctaphid.CmdMsg, []byte{0x00, 0x03, 0x00, 0x00, 0x00})
	if err != nil || f.Cmd != ctaphid.CmdMsg || len(f.Payload) < 2 {
		t.Fatalf("U2F VERSION: %v cmd 0x%02x % x", err, f.Cmd, f.Payload)
	}
}

func TestServeUnix(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "run", "s")
	stop := startDaemon(t, append([]string{"--transport", "unix:" + sock}, serveTestArgs(t)...)...)
	c, err := ctaphidtest.DialUnix(sock, 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	probe(t, c)
	code, stderr := stop()
	if code != 0 {
		t.Errorf("exit code %d after SIGTERM, stderr:\n%s", code, stderr)
	}
	if _, err := os.Stat(sock); !os.IsNotExist(err) {
		t.Errorf("socket left behind: %v", err)
	}
}

// TestServeUnixInUse: a second daemon on the socket of a live one exits 1
// naming the first one's pid, before touching the TPM or the state, and
// the first one keeps serving.
func TestServeUnixInUse(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "run", "s")
	stop := startDaemon(t, append([]string{"--transport", "unix:" + sock}, serveTestArgs(t)...)...)
	conn, err := net.Dial("unixpacket", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	cred, err := relay.PeerCred(conn.(*net.UnixConn))
	if err != nil || cred.Pid <= 0 {
		t.Fatalf("no pid for the first daemon: %v", err)
	}
	firstPID := cred.Pid
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, daemonBinary(t), append([]string{"serve", "--transport", "unix:" + sock}, serveTestArgs(t)...)...).CombinedOutput()
	if ee, ok := err.(*exec.ExitError); !ok || ee.ExitCode() != 1 {
		t.Errorf("second daemon: %v, want exit status 1\n%s", err, out)
	}
	if want := fmt.Sprintf("another process (pid %d) serves %s", firstPID, sock); !strings.Contains(string(out), want) {
		t.Errorf("second daemon said:\n%s\nwant %q", out, want)
	}
	probe(t, &ctaphidtest.Client{Conn: ctaphidtest.NetConn(conn, 10*time.Second)})
	if code, stderr := stop(); code != 0 {
		t.Errorf("first daemon: exit code %d after SIGTERM, stderr:\n%s", code, stderr)
	}
}

func TestServeUDP(t *testing.T) {
	spec, c, err := ctaphidtest.LoopbackUDP(10 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	stop := startDaemon(t, append([]string{"--transport", spec}, serveTestArgs(t)...)...)
	probe(t, c)
	if code, stderr := stop(); code != 0 {
		t.Errorf("exit code %d after SIGTERM, stderr:\n%s", code, stderr)
	}
}

func TestServeStartupErrors(t *testing.T) {
	bin := daemonBinary(t)
	for _, tc := range []struct {
		args []string
		want string
	}{
		{[]string{"--transport", "usb"}, "unknown transport"},
		{[]string{"--transport", "udp:0.0.0.0:8111,127.0.0.1:7112", "--insecure-test-mode"}, "loopback"},
		{[]string{"--log-level", "loud"}, "--log-level"},
		{[]string{"--transport", "unix:" + filepath.Join(t.TempDir(), "run", "s"), "--tpm", "simulator"}, "--tpm simulator keeps every key in this process's memory"},
		{[]string{"--transport", "unix:" + filepath.Join(t.TempDir(), "run", "s"), "--tpm", "swtpm:/nonexistent", "--presence", "always-allow"}, "needs --insecure-test-mode"},
		{[]string{"--transport", "unix:" + filepath.Join(t.TempDir(), "run", "s"), "--tpm", "swtpm:/nonexistent", "--presence", "allow-after:1.5s"}, "needs --insecure-test-mode"},
		// UDP cannot tell who sends a report: test mode only.
		{[]string{"--transport", "udp"}, "udp accepts reports from any local user"},
		{[]string{"--transport", "udp:127.0.0.1:0,127.0.0.1:7112"}, "needs --insecure-test-mode"},
		// unix: only in a directory nobody else can enter.
		{[]string{"--transport", "unix:" + filepath.Join(t.TempDir(), "s"), "--tpm", "swtpm:/nonexistent"}, "has mode 0755"},
	} {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		out, err := exec.CommandContext(ctx, bin, append([]string{"serve", "--state-dir", t.TempDir()}, tc.args...)...).CombinedOutput()
		cancel()
		ee, ok := err.(*exec.ExitError)
		if !ok || ee.ExitCode() == 0 {
			t.Errorf("%v: err %v, want a non-zero exit", tc.args, err)
		}
		// One line, and for a usage error the pointer to the help.
		msg := strings.TrimSuffix(strings.TrimSpace(string(out)), "\nRun 'tpm-fido serve -h' for help.")
		if !strings.Contains(msg, tc.want) || strings.Contains(msg, "\n") {
			t.Errorf("%v: output %q, want one line mentioning %q", tc.args, out, tc.want)
		}
	}
}

func TestParseServeFlags(t *testing.T) {
	t.Setenv("XDG_DATA_HOME", "/xdg")
	cfg, _, err := parseServeFlags(nil)
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Transport != "relay" || cfg.TPM != "/dev/tpmrm0" || cfg.StateDir != "/xdg/tpm-fido" ||
		cfg.Presence != "auto" || cfg.PromptTimeout != 30*time.Second || cfg.InsecureTestMode {
		t.Errorf("defaults: %+v", cfg)
	}
	cfg, _, err = parseServeFlags([]string{"--transport", "unix:/x", "--log-level", "debug", "--insecure-test-mode"})
	if err != nil {
		t.Fatal(err)
	}
	if cfg.Transport != "unix:/x" || !cfg.InsecureTestMode || cfg.LogLevel.String() != "DEBUG" {
		t.Errorf("parsed: %+v", cfg)
	}
	if _, _, err := parseServeFlags([]string{"--prompt-timeout", "0s"}); err == nil {
		t.Error("zero prompt timeout accepted")
	}
	if cfg, _, _ := parseServeFlags(nil); cfg.MaxResidents != tpmstore.DefaultMaxResidents || cfg.MaxResidents < 10000 {
		t.Errorf("default capacity %d", cfg.MaxResidents)
	}
	if cfg, _, err := parseServeFlags([]string{"--max-residents", "50000"}); err != nil || cfg.MaxResidents != 50000 {
		t.Errorf("--max-residents 50000: %d %v", cfg.MaxResidents, err)
	}
	for _, bad := range []string{"0", "-1", "4294967296"} {
		if _, _, err := parseServeFlags([]string{"--max-residents", bad}); err == nil {
			t.Errorf("--max-residents %s accepted", bad)
		}
	}
}

func TestSDNotifyAbstract(t *testing.T) {
	name := "@tpm-fido-test-" + filepath.Base(t.TempDir())
	l, err := net.ListenUnixgram("unixgram", &net.UnixAddr{Name: "\x00" + name[1:], Net: "unixgram"})
	if err != nil {
		t.Skipf("abstract sockets unavailable: %v", err)
	}
	defer l.Close()
	t.Setenv("NOTIFY_SOCKET", name)
	if err := sdNotify("READY=1"); err != nil {
		t.Fatal(err)
	}
	l.SetReadDeadline(time.Now().Add(5 * time.Second))
	buf := make([]byte, 64)
	n, err := l.Read(buf)
	if err != nil || string(buf[:n]) != "READY=1" {
		t.Fatalf("got %q, %v", buf[:n], err)
	}
}
