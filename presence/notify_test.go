package presence

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"

	"github.com/tpm-fido/tpm-fido/presence/presencetest"
)

// startNotifier starts the test notification server on the bus at addr,
// pressing press at once on each prompt ("" = never answers), for the
// rest of the test.
func startNotifier(t *testing.T, addr, press string) *presencetest.Notifier {
	t.Helper()
	f, err := presencetest.StartNotifier(addr, press, 0)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// waitShown waits until f has shown a notification.
func waitShown(f *presencetest.Notifier) {
	for len(f.Shown()) == 0 {
		time.Sleep(10 * time.Millisecond)
	}
}

func TestNotificationAllowDeny(t *testing.T) {
	addr := presencetest.SessionBus(t)
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
			if shown := f.Shown(); len(shown) != 1 || shown[0] != "Sign in to example.org" {
				t.Errorf("notifications shown = %q", shown)
			}
			f.Close() // release the name for the next case
		})
	}
}

func TestNotificationCancelCloses(t *testing.T) {
	addr := presencetest.SessionBus(t)
	f := startNotifier(t, addr, "")
	n := NewNotification(addr, time.Minute, nil)
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- n.Confirm(ctx, Request{Op: OpRegister, RPID: "ssh:"}) }()
	// Wait until the notification is shown, then cancel like CTAPHID_CANCEL.
	waitShown(f)
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) {
		t.Fatalf("Confirm = %v, want context.Canceled", err)
	}
	select {
	case id := <-f.Closed():
		if id != 1 {
			t.Errorf("CloseNotification(%d), want 1", id)
		}
	case <-time.After(5 * time.Second): // the fake server records the call on its own goroutine
		t.Fatal("cancel did not close the notification")
	}
}

func TestNotificationTimeoutCloses(t *testing.T) {
	addr := presencetest.SessionBus(t)
	f := startNotifier(t, addr, "")
	n := NewNotification(addr, 200*time.Millisecond, nil)
	if err := n.Confirm(context.Background(), Request{Op: OpRegister, RPID: "a.example"}); !errors.Is(err, ErrTimeout) {
		t.Fatalf("Confirm = %v, want ErrTimeout", err)
	}
	select {
	case <-f.Closed():
	default:
		t.Fatal("timeout did not close the notification")
	}
}

func TestNotificationNoServer(t *testing.T) {
	addr := presencetest.SessionBus(t)
	if err := NotificationServerAvailable(addr); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("NotificationServerAvailable = %v, want ErrUnavailable", err)
	}
	if _, err := New(BackendNotification, Options{BusAddress: addr}); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("New(notification) = %v, want ErrUnavailable", err)
	}
}

func TestAutoPicksNotification(t *testing.T) {
	addr := presencetest.SessionBus(t)
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
	addr := presencetest.SessionBus(t)
	f := startNotifier(t, addr, "")
	forger, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer forger.Close()
	n := NewNotification(addr, 2*time.Second, nil)
	errc := make(chan error, 1)
	go func() { errc <- n.Confirm(context.Background(), Request{Op: OpAuthenticate, RPID: "example.org"}) }()
	waitShown(f)
	// The notification id is 1; forge the server's answer for it.
	if err := forger.Emit(notifyPath, notifyIface+".ActionInvoked", uint32(1), "allow"); err != nil {
		t.Fatal(err)
	}
	if err := <-errc; !errors.Is(err, ErrTimeout) {
		t.Fatalf("Confirm after a forged allow = %v, want ErrTimeout (the real server never answered)", err)
	}
}
