package presencetest

import (
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// TestNotifier: the notification server presses the chosen action on a
// prompt that offers it, and records it; a plain notification is only
// shown.
func TestNotifier(t *testing.T) {
	addr := SessionBus(t)
	n, err := StartNotifier(addr, "allow", 300*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	defer n.Close()

	conn, err := dbus.Connect(addr)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	if err := conn.AddMatchSignal(dbus.WithMatchInterface(NotifyIface)); err != nil {
		t.Fatal(err)
	}
	signals := make(chan *dbus.Signal, 8)
	conn.Signal(signals)
	obj := conn.Object(NotifyName, NotifyPath)
	notify := func(actions []string) uint32 {
		var id uint32
		if err := obj.Call(NotifyIface+".Notify", 0, "test", uint32(0), "", "Sign in to localhost", "body",
			actions, map[string]dbus.Variant{}, int32(-1)).Store(&id); err != nil {
			t.Fatal(err)
		}
		return id
	}
	for _, answer := range []string{"allow", "deny"} {
		n.SetAnswer(answer)
		id := notify([]string{"allow", "Allow", "deny", "Deny"})
		select {
		case s := <-signals:
			if s.Name != NotifyIface+".ActionInvoked" || s.Body[0].(uint32) != id || s.Body[1].(string) != answer {
				t.Fatalf("signal %s %v, want ActionInvoked(%d, %s)", s.Name, s.Body, id, answer)
			}
		case <-time.After(5 * time.Second):
			t.Fatalf("no answer to the prompt (%s)", answer)
		}
		<-signals // NotificationClosed
		if p := n.Take(); len(p) != 1 || p[0].Answer != answer || p[0].Summary != "Sign in to localhost" {
			t.Fatalf("recorded %+v", p)
		}
	}
	notify(nil)
	select {
	case s := <-signals:
		t.Fatalf("a notification without actions got %s", s.Name)
	case <-time.After(700 * time.Millisecond):
	}
	if p := n.Take(); len(p) != 0 {
		t.Fatalf("a notification without actions was recorded: %+v", p)
	}
	if s := n.Shown(); len(s) != 3 {
		t.Fatalf("shown %q, want the three notifications", s)
	}
}
