package presence

import (
	"bufio"
	"context"
	"errors"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// privateBus starts a private session dbus-daemon and returns its address.
func privateBus(t *testing.T) string {
	t.Helper()
	path, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Skip("dbus-daemon not installed")
	}
	cmd := exec.Command(path, "--session", "--nofork", "--nopidfile", "--print-address=1")
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	line, err := bufio.NewReader(out).ReadString('\n')
	if err != nil {
		t.Fatalf("dbus-daemon printed no address: %v", err)
	}
	return strings.TrimSpace(line)
}

// fakeNotifier is a small org.freedesktop.Notifications server. It answers
// each Notify with the action in press ("" = never answers) and records
// what it was asked.
type fakeNotifier struct {
	conn  *dbus.Conn
	press string

	mu      sync.Mutex
	summary []string
	closed  chan uint32
	nextID  uint32
}

func startNotifier(t *testing.T, addr, press string) *fakeNotifier {
	t.Helper()
	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	f := &fakeNotifier{conn: conn, press: press, closed: make(chan uint32, 8)}
	if err := conn.Export(f, notifyPath, notifyIface); err != nil {
		t.Fatal(err)
	}
	reply, err := conn.RequestName(notifyName, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		t.Fatalf("RequestName: %v %v", reply, err)
	}
	return f
}

func (f *fakeNotifier) Notify(app string, replaces uint32, icon, summary, body string, actions []string, hints map[string]dbus.Variant, timeout int32) (uint32, *dbus.Error) {
	f.mu.Lock()
	f.nextID++
	id := f.nextID
	f.summary = append(f.summary, summary)
	f.mu.Unlock()
	if f.press != "" {
		go func() {
			_ = f.conn.Emit(notifyPath, notifyIface+".ActionInvoked", id, f.press)
			_ = f.conn.Emit(notifyPath, notifyIface+".NotificationClosed", id, uint32(2))
		}()
	}
	return id, nil
}

func (f *fakeNotifier) CloseNotification(id uint32) *dbus.Error {
	f.closed <- id
	return nil
}

func (f *fakeNotifier) GetCapabilities() ([]string, *dbus.Error) {
	return []string{"actions", "body"}, nil
}

func TestNotificationAllowDeny(t *testing.T) {
	addr := privateBus(t)
	for _, c := range []struct {
		press string
		want  error
	}{{"allow", nil}, {"deny", ErrDenied}} {
		t.Run(c.press, func(t *testing.T) {
			f := startNotifier(t, addr, c.press)
			if err := NotificationServerAvailable(addr); err != nil {
				t.Fatalf("server not seen: %v", err)
			}
			n := NewNotification(addr, 10*time.Second, nil)
			err := n.Confirm(context.Background(), Request{Op: OpAuthenticate, RPID: "example.org"})
			if !errors.Is(err, c.want) {
				t.Fatalf("Confirm = %v, want %v", err, c.want)
			}
			f.mu.Lock()
			defer f.mu.Unlock()
			if len(f.summary) != 1 || f.summary[0] != "Sign in to example.org" {
				t.Errorf("notifications shown = %q", f.summary)
			}
			f.conn.Close() // release the name for the next case
		})
	}
}

func TestNotificationCancelCloses(t *testing.T) {
	addr := privateBus(t)
	f := startNotifier(t, addr, "")
	n := NewNotification(addr, time.Minute, nil)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- n.Confirm(ctx, Request{Op: OpRegister, RPID: "ssh:"}) }()
	// Wait until the notification is shown, then cancel like CTAPHID_CANCEL.
	for {
		f.mu.Lock()
		shown := len(f.summary)
		f.mu.Unlock()
		if shown > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Confirm = %v, want context.Canceled", err)
	}
	select {
	case id := <-f.closed:
		if id != 1 {
			t.Errorf("CloseNotification(%d), want 1", id)
		}
	case <-time.After(5 * time.Second): // the fake server records the call on its own goroutine
		t.Fatal("cancel did not close the notification")
	}
}

func TestNotificationTimeoutCloses(t *testing.T) {
	addr := privateBus(t)
	f := startNotifier(t, addr, "")
	n := NewNotification(addr, 200*time.Millisecond, nil)
	if err := n.Confirm(context.Background(), Request{Op: OpRegister, RPID: "a.example"}); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Confirm = %v, want ErrTimeout", err)
	}
	select {
	case <-f.closed:
	default:
		t.Fatal("timeout did not close the notification")
	}
}

func TestNotificationNoServer(t *testing.T) {
	addr := privateBus(t)
	if err := NotificationServerAvailable(addr); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("NotificationServerAvailable = %v, want ErrUnavailable", err)
	}
	if _, err := New(BackendNotification, Options{BusAddress: addr}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("New(notification) = %v, want ErrUnavailable", err)
	}
}

func TestAutoPicksNotification(t *testing.T) {
	addr := privateBus(t)
	startNotifier(t, addr, "allow")
	opts := Options{
		BusAddress: addr,
		LookPath:   func(n string) (string, error) { return "/usr/bin/" + n, nil },
	}
	got, err := Choose(BackendAuto, opts)
	if err != nil || got.Backend != BackendNotification {
		t.Fatalf("Choose with a notification server = %+v, %v; want notification", got, err)
	}
	p, err := New(BackendAuto, opts)
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Confirm(context.Background(), Request{Op: OpSelect}); err != nil {
		t.Fatalf("auto prompt answered allow: %v", err)
	}
}

// TestNotificationIgnoresForgedAnswer: any program on the session bus can
// emit an ActionInvoked signal; only the notification server's own
// answer counts, so a forged "allow" must not approve the request.
func TestNotificationIgnoresForgedAnswer(t *testing.T) {
	addr := privateBus(t)
	f := startNotifier(t, addr, "")
	forger, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer forger.Close()
	n := NewNotification(addr, 2*time.Second, nil)
	errc := make(chan error, 1)
	go func() { errc <- n.Confirm(context.Background(), Request{Op: OpAuthenticate, RPID: "example.org"}) }()
	for {
		f.mu.Lock()
		shown := len(f.summary)
		f.mu.Unlock()
		if shown > 0 {
			break
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The notification id is 1; forge the server's answer for it.
	if err := forger.Emit(notifyPath, notifyIface+".ActionInvoked", uint32(1), "allow"); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrTimeout) {
		t.Fatalf("Confirm after a forged allow = %v, want ErrTimeout (the real server never answered)", err)
	}
}
