// Package presencetest is test support for the presence prompts: a
// private D-Bus session bus, and a desktop notification server
// (org.freedesktop.Notifications) that stands in for the person in front
// of the screen. The presence package's tests and the browser end-to-end
// test's guest use it.
package presencetest

import (
	"bufio"
	"fmt"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/godbus/dbus/v5"
)

// D-Bus names of the desktop notification service.
const (
	NotifyName  = "org.freedesktop.Notifications"
	NotifyPath  = dbus.ObjectPath("/org/freedesktop/Notifications")
	NotifyIface = "org.freedesktop.Notifications"
)

// SessionBus starts a private session dbus-daemon, with its socket in a
// temporary directory of t, and returns its address. The bus ends with
// the test. Without dbus-daemon the test skips.
func SessionBus(t testing.TB) string {
	t.Helper()
	path, err := exec.LookPath("dbus-daemon")
	if err != nil {
		t.Skip("dbus-daemon not installed")
	}
	cmd := exec.Command(path, "--session", "--nofork", "--nopidfile", "--print-address=1",
		"--address=unix:dir="+t.TempDir())
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

// Prompt is one notification that offered the chosen answer, which was
// pressed.
type Prompt struct {
	Summary, Body string
	Answer        string // the action pressed
	At            time.Time
}

// Notifier is the notification server. A notification whose actions
// include the chosen answer gets it pressed after a delay, the time a
// person takes to read it; others are only shown.
type Notifier struct {
	conn   *dbus.Conn
	delay  time.Duration
	closed chan uint32

	mu      sync.Mutex
	answer  string // an action key such as "allow" or "deny"; "" presses nothing
	nextID  uint32
	shown   []string // the summary of every notification
	prompts []Prompt // answered since the last Take
}

// StartNotifier connects to the bus at address and takes the
// notification service's name, to press answer (see SetAnswer) delay
// after each notification that offers it.
func StartNotifier(address, answer string, delay time.Duration) (*Notifier, error) {
	conn, err := dbus.Connect(address)
	if err != nil {
		return nil, err
	}
	n := &Notifier{conn: conn, answer: answer, delay: delay, closed: make(chan uint32, 64)}
	if err := conn.Export(n, NotifyPath, NotifyIface); err != nil {
		conn.Close()
		return nil, err
	}
	reply, err := conn.RequestName(NotifyName, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		conn.Close()
		return nil, fmt.Errorf("cannot own %s on the session bus (reply %v): %v", NotifyName, reply, err)
	}
	return n, nil
}

// Close leaves the bus, which releases the service's name.
func (n *Notifier) Close() error { return n.conn.Close() }

// SetAnswer chooses the action pressed on the next notifications ("" for
// none: they stay unanswered).
func (n *Notifier) SetAnswer(action string) {
	n.mu.Lock()
	n.answer = action
	n.mu.Unlock()
}

// Take returns the prompts answered since the last Take.
func (n *Notifier) Take() []Prompt {
	n.mu.Lock()
	defer n.mu.Unlock()
	p := n.prompts
	n.prompts = nil
	return p
}

// Shown returns the summaries of all the notifications shown so far,
// answered or not.
func (n *Notifier) Shown() []string {
	n.mu.Lock()
	defer n.mu.Unlock()
	return append([]string(nil), n.shown...)
}

// Closed receives the ID of each notification a client closed with
// CloseNotification (the first 64 not yet received).
func (n *Notifier) Closed() <-chan uint32 { return n.closed }

// Notify implements the D-Bus method.
func (n *Notifier) Notify(app string, replaces uint32, icon, summary, body string, actions []string, hints map[string]dbus.Variant, timeout int32) (uint32, *dbus.Error) {
	n.mu.Lock()
	n.nextID++
	id := n.nextID
	answer := n.answer
	n.shown = append(n.shown, summary)
	// actions is a list of (key, label) pairs.
	offered := false
	for i := 0; i+1 < len(actions); i += 2 {
		if answer != "" && actions[i] == answer {
			offered = true
		}
	}
	if offered {
		n.prompts = append(n.prompts, Prompt{Summary: summary, Body: body, Answer: answer, At: time.Now()})
	}
	n.mu.Unlock()
	if offered {
		go func() {
			time.Sleep(n.delay)
			_ = n.conn.Emit(NotifyPath, NotifyIface+".ActionInvoked", id, answer)
			_ = n.conn.Emit(NotifyPath, NotifyIface+".NotificationClosed", id, uint32(2))
		}()
	}
	return id, nil
}

// CloseNotification implements the D-Bus method.
func (n *Notifier) CloseNotification(id uint32) *dbus.Error {
	select {
	case n.closed <- id:
	default:
	}
	return nil
}

// GetCapabilities implements the D-Bus method.
func (n *Notifier) GetCapabilities() ([]string, *dbus.Error) {
	return []string{"actions", "body"}, nil
}

// GetServerInformation implements the D-Bus method.
func (n *Notifier) GetServerInformation() (string, string, string, string, *dbus.Error) {
	return "tpm-fido-test-notifier", "tpm-fido", "1.0", "1.2", nil
}
