package browser

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"sync"
	"time"
)

// A client for Firefox's Marionette protocol: messages are "LENGTH:JSON";
// a command is [0, id, name, params] and its response [1, id, error,
// result]. The server speaks first with its protocol level.

// Marionette is one connection with a WebDriver session.
type Marionette struct {
	conn net.Conn
	r    *bufio.Reader
	mu   sync.Mutex
	id   int
}

// MarionetteError is an error the server returned for a command.
type MarionetteError struct {
	Kind    string `json:"error"`
	Message string `json:"message"`
	Data    struct {
		Text string `json:"text"`
	} `json:"data"`
}

func (e *MarionetteError) Error() string { return "marionette: " + e.Kind + ": " + e.Message }

// DialMarionette connects to addr and checks the greeting.
func DialMarionette(addr string, timeout time.Duration) (*Marionette, error) {
	conn, err := net.DialTimeout("tcp", addr, timeout)
	if err != nil {
		return nil, err
	}
	m := &Marionette{conn: conn, r: bufio.NewReader(conn)}
	_ = conn.SetDeadline(time.Now().Add(timeout))
	var hello struct {
		ApplicationType    string `json:"applicationType"`
		MarionetteProtocol int    `json:"marionetteProtocol"`
	}
	b, err := m.readPacket()
	if err == nil {
		err = json.Unmarshal(b, &hello)
	}
	if err != nil || hello.MarionetteProtocol < 3 {
		conn.Close()
		return nil, fmt.Errorf("marionette greeting %q: %v", b, err)
	}
	_ = conn.SetDeadline(time.Time{})
	return m, nil
}

// Close ends the connection.
func (m *Marionette) Close() error { return m.conn.Close() }

func (m *Marionette) readPacket() ([]byte, error) {
	head, err := m.r.ReadString(':')
	if err != nil {
		return nil, err
	}
	n, err := strconv.Atoi(head[:len(head)-1])
	if err != nil || n < 0 || n > 64<<20 {
		return nil, fmt.Errorf("marionette: bad packet length %q", head)
	}
	b := make([]byte, n)
	_, err = io.ReadFull(m.r, b)
	return b, err
}

// Call sends a command and decodes its result into out (when not nil).
func (m *Marionette) Call(timeout time.Duration, name string, params any, out any) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if params == nil {
		params = map[string]any{}
	}
	m.id++
	id := m.id
	msg, err := json.Marshal([]any{0, id, name, params})
	if err != nil {
		return err
	}
	_ = m.conn.SetDeadline(time.Now().Add(timeout))
	defer func() { _ = m.conn.SetDeadline(time.Time{}) }()
	if _, err := fmt.Fprintf(m.conn, "%d:%s", len(msg), msg); err != nil {
		return err
	}
	for {
		b, err := m.readPacket()
		if err != nil {
			return fmt.Errorf("marionette %s: %w", name, err)
		}
		var resp []json.RawMessage
		if err := json.Unmarshal(b, &resp); err != nil || len(resp) != 4 {
			return fmt.Errorf("marionette %s: bad response %.200q", name, b)
		}
		var rid int
		if err := json.Unmarshal(resp[1], &rid); err != nil || rid != id {
			continue // a late answer to a command that timed out
		}
		if string(resp[2]) != "null" {
			var me MarionetteError
			if err := json.Unmarshal(resp[2], &me); err != nil {
				return fmt.Errorf("marionette %s: %s", name, resp[2])
			}
			return &me
		}
		if out == nil {
			return nil
		}
		return json.Unmarshal(resp[3], out)
	}
}

// Script runs JavaScript in the current context (content or chrome) and
// decodes its return value ({"value": ...}) into out.
func (m *Marionette) Script(timeout time.Duration, script string, out any) error {
	var res struct {
		Value json.RawMessage `json:"value"`
	}
	if err := m.Call(timeout, "WebDriver:ExecuteScript", map[string]any{"script": script, "args": []any{}}, &res); err != nil {
		return err
	}
	if out == nil {
		return nil
	}
	return json.Unmarshal(res.Value, out)
}

// SetContext switches between "content" and "chrome" (the browser's own
// UI; needs Firefox started with -remote-allow-system-access).
func (m *Marionette) SetContext(ctx string) error {
	return m.Call(10*time.Second, "Marionette:SetContext", map[string]any{"value": ctx}, nil)
}

// isPromptOpen reports whether err says a user prompt is open, and its text.
func isPromptOpen(err error) (string, bool) {
	var me *MarionetteError
	if errors.As(err, &me) && me.Kind == "unexpected alert open" {
		return me.Data.Text, true
	}
	return "", false
}
