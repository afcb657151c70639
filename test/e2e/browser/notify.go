package browser

import (
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/godbus/dbus/v5"
)

// A desktop notification server (org.freedesktop.Notifications) on the
// guest's session bus, standing in for the user in front of the screen:
// the daemon's presence backend "notification" shows its prompt with
// Allow/Deny actions, and this server presses the button the test chose.

const (
	notifyName  = "org.freedesktop.Notifications"
	notifyPath  = dbus.ObjectPath("/org/freedesktop/Notifications")
	notifyIface = "org.freedesktop.Notifications"
)

// Prompt is one notification that offered an answer.
type Prompt struct {
	Summary, Body string
	Answer        string // the action pressed
	At            time.Time
}

// Notifier is the notification server.
type Notifier struct {
	conn *dbus.Conn

	mu      sync.Mutex
	answer  string // "allow", "deny" or "" (leave it unanswered)
	nextID  uint32
	prompts []Prompt
}

// StartNotifier connects to the bus at address and takes the
// notification service's name.
func StartNotifier(address string) (*Notifier, error) {
	conn, err := dbus.Connect(address)
	if err != nil {
		return nil, err
	}
	n := &Notifier{conn: conn, answer: "allow"}
	if err := conn.Export(n, notifyPath, notifyIface); err != nil {
		conn.Close()
		return nil, err
	}
	reply, err := conn.RequestName(notifyName, dbus.NameFlagDoNotQueue)
	if err != nil || reply != dbus.RequestNameReplyPrimaryOwner {
		conn.Close()
		return nil, fmt.Errorf("cannot own %s on the session bus (reply %v): %v", notifyName, reply, err)
	}
	return n, nil
}

// Close leaves the bus.
func (n *Notifier) Close() error { return n.conn.Close() }

// SetAnswer chooses the action pressed on the next prompts.
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

// Notify implements the D-Bus method. A notification whose actions
// include the chosen answer gets it pressed; others are only shown.
func (n *Notifier) Notify(app string, replaces uint32, icon, summary, body string, actions []string, hints map[string]dbus.Variant, timeout int32) (uint32, *dbus.Error) {
	n.mu.Lock()
	n.nextID++
	id := n.nextID
	answer := n.answer
	// actions is a list of (key, label) pairs.
	offered := false
	for i := 0; i+1 < len(actions); i += 2 {
		if actions[i] == answer {
			offered = true
		}
	}
	if offered {
		n.prompts = append(n.prompts, Prompt{Summary: summary, Body: body, Answer: answer, At: time.Now()})
	}
	n.mu.Unlock()
	if offered {
		go func() {
			// A person takes a moment to read the prompt.
			time.Sleep(300 * time.Millisecond)
			_ = n.conn.Emit(notifyPath, notifyIface+".ActionInvoked", id, answer)
			_ = n.conn.Emit(notifyPath, notifyIface+".NotificationClosed", id, uint32(2))
		}()
	}
	return id, nil
}

// CloseNotification implements the D-Bus method.
func (n *Notifier) CloseNotification(id uint32) *dbus.Error { return nil }

// GetCapabilities implements the D-Bus method.
func (n *Notifier) GetCapabilities() ([]string, *dbus.Error) {
	return []string{"actions", "body"}, nil
}

// GetServerInformation implements the D-Bus method.
func (n *Notifier) GetServerInformation() (string, string, string, string, *dbus.Error) {
	return "tpm-fido-e2e-notifier", "tpm-fido", "1.0", "1.2", nil
}

// describePrompts is a one-line account of prompts for the test output.
func describePrompts(ps []Prompt) string {
	if len(ps) == 0 {
		return "no presence prompt"
	}
	var s []string
	for _, p := range ps {
		s = append(s, fmt.Sprintf("notification %q -> %s", p.Summary, p.Answer))
	}
	return strings.Join(s, ", ")
}
