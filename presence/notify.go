package presence

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"time"

	"github.com/godbus/dbus/v5"
)

// D-Bus names of the desktop notification service.
const (
	notifyName  = "org.freedesktop.Notifications"
	notifyPath  = dbus.ObjectPath("/org/freedesktop/Notifications")
	notifyIface = "org.freedesktop.Notifications"
)

// Notification asks with a desktop notification carrying Allow and Deny
// actions (org.freedesktop.Notifications over the session bus). It
// connects for each prompt, so a restarted bus or notification server is
// picked up, and closes the notification on timeout or cancel.
type Notification struct {
	busAddress string // "" means the session bus
	timeout    time.Duration
	log        *slog.Logger
}

// NewNotification returns a notification prompt on the bus at busAddress
// ("" for the session bus of $DBUS_SESSION_BUS_ADDRESS). timeout ≤ 0
// means DefaultTimeout.
func NewNotification(busAddress string, timeout time.Duration, log *slog.Logger) *Notification {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Notification{busAddress: busAddress, timeout: timeout, log: log}
}

// errNoSessionBus: neither $DBUS_SESSION_BUS_ADDRESS nor
// $XDG_RUNTIME_DIR/bus names a session bus.
var errNoSessionBus = errors.New("no session bus ($DBUS_SESSION_BUS_ADDRESS and $XDG_RUNTIME_DIR/bus are absent)")

// dialBus connects to address, or to the session bus when address is
// empty. It never autolaunches a bus (dbus-launch would start one that
// no notification server listens on).
func dialBus(address string) (*dbus.Conn, error) {
	if address == "" {
		address = os.Getenv("DBUS_SESSION_BUS_ADDRESS")
	}
	if address == "" {
		if rt := os.Getenv("XDG_RUNTIME_DIR"); rt != "" {
			if _, err := os.Stat(rt + "/bus"); err == nil {
				address = "unix:path=" + rt + "/bus"
			}
		}
	}
	if address == "" {
		return nil, errNoSessionBus
	}
	return dbus.Connect(address)
}

// NotificationServerAvailable reports whether the bus at busAddress ("" =
// session bus) has a notification server running or activatable.
func NotificationServerAvailable(busAddress string) error {
	conn, err := dialBus(busAddress)
	if err != nil {
		return fmt.Errorf("%w: session bus: %w", ErrUnavailable, err)
	}
	defer conn.Close()
	return notificationServer(conn)
}

func notificationServer(conn *dbus.Conn) error {
	bus := conn.BusObject()
	var has bool
	if err := bus.Call("org.freedesktop.DBus.NameHasOwner", 0, notifyName).Store(&has); err != nil {
		return fmt.Errorf("%w: session bus: %w", ErrUnavailable, err)
	}
	if has {
		return nil
	}
	var names []string
	if err := bus.Call("org.freedesktop.DBus.ListActivatableNames", 0).Store(&names); err == nil {
		for _, n := range names {
			if n == notifyName {
				return nil
			}
		}
	}
	return fmt.Errorf("%w: no notification server on the session bus", ErrUnavailable)
}

// Confirm implements Prompter.
func (n *Notification) Confirm(ctx context.Context, req Request) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	conn, err := dialBus(n.busAddress)
	if err != nil {
		return fmt.Errorf("%w: session bus: %w", ErrUnavailable, err)
	}
	defer conn.Close()

	// Any program on the bus can emit ActionInvoked: only the server's
	// own signals count, so talk to it by its unique name and accept
	// signals from that name only.
	var owner string
	if err := conn.BusObject().CallWithContext(ctx, "org.freedesktop.DBus.GetNameOwner", 0, notifyName).Store(&owner); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: no notification server: %w", ErrUnavailable, err)
	}
	// Subscribe before Notify, so no answer can slip past.
	signals := make(chan *dbus.Signal, 16)
	conn.Signal(signals)
	if err := conn.AddMatchSignal(dbus.WithMatchSender(owner), dbus.WithMatchObjectPath(notifyPath), dbus.WithMatchInterface(notifyIface)); err != nil {
		return fmt.Errorf("%w: notification signals: %w", ErrUnavailable, err)
	}

	obj := conn.Object(owner, notifyPath)
	body := "Allow this request? It times out in " + n.timeout.Round(time.Second).String() + "."
	hints := map[string]dbus.Variant{
		"urgency":  dbus.MakeVariant(byte(2)), // critical: stays until answered
		"resident": dbus.MakeVariant(false),
		"category": dbus.MakeVariant("device"),
	}
	// Not ctx: a cancel while Notify is under way would lose the ID of a
	// notification the server shows, which then could not be closed. A
	// cancel is seen right after, in the loop below.
	notifyCtx, notifyCancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer notifyCancel()
	var id uint32
	call := obj.CallWithContext(notifyCtx, notifyIface+".Notify", 0,
		"tpm-fido", uint32(0), "security-high", req.Message(), body,
		[]string{"allow", "Allow", "deny", "Deny"}, hints, int32(n.timeout/time.Millisecond))
	if err := call.Store(&id); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%w: Notify: %w", ErrUnavailable, err)
	}

	timer := time.NewTimer(n.timeout)
	defer timer.Stop()
	var stop error
	for stop == nil {
		select {
		case s, ok := <-signals:
			if !ok {
				return fmt.Errorf("%w: session bus connection lost", ErrUnavailable)
			}
			if len(s.Body) < 2 || s.Sender != owner {
				continue
			}
			if sid, _ := s.Body[0].(uint32); sid != id {
				continue
			}
			switch s.Name {
			case notifyIface + ".ActionInvoked":
				action, _ := s.Body[1].(string)
				n.closeNotification(obj, id)
				if action == "allow" {
					return nil
				}
				return ErrDenied
			case notifyIface + ".NotificationClosed":
				// Dismissed (or expired) without an answer.
				reason, _ := s.Body[1].(uint32)
				if reason == 1 { // expired
					return ErrTimeout
				}
				return ErrDenied
			}
		case <-timer.C:
			stop = ErrTimeout
		case <-ctx.Done():
			stop = ctx.Err()
		}
	}
	n.closeNotification(obj, id)
	return stop
}

func (n *Notification) closeNotification(obj dbus.BusObject, id uint32) {
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if err := obj.CallWithContext(ctx, notifyIface+".CloseNotification", 0, id).Err; err != nil {
		n.log.Debug("CloseNotification failed", "id", id, "err", err)
	}
}
