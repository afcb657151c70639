// Package presence asks the user to confirm that they are present and
// approve an operation: a desktop notification, pinentry, a terminal
// prompt, or (for tests only) a fixed answer.
package presence

import (
	"context"
	"errors"
	"strings"
	"time"
	"unicode"
)

// Errors a Prompter returns besides ctx.Err().
var (
	// ErrDenied means the user (or a fixed test answer) said no.
	ErrDenied = errors.New("presence: denied by user")
	// ErrTimeout means nobody answered before the prompt's deadline.
	ErrTimeout = errors.New("presence: prompt timed out")
	// ErrUnavailable means the backend cannot show a prompt at all.
	ErrUnavailable = errors.New("presence: no prompt backend available")
)

// Operation is what the user is asked to approve.
type Operation int

// Operations.
const (
	OpRegister     Operation = iota // makeCredential / U2F register
	OpAuthenticate                  // getAssertion / U2F authenticate
	OpReset                         // authenticatorReset
	OpSelect                        // authenticatorSelection
)

// Request describes one prompt.
type Request struct {
	Op       Operation
	RPID     string // relying party ID, e.g. "github.com" or "ssh:"
	UserName string // optional, shown when known
	// Challenge identifies the exact request (CTAP2: its clientDataHash;
	// U2F: challenge and application). It is not shown; a Coalescer shares
	// an answer only between requests with equal Op, RPID and Challenge.
	Challenge []byte
}

// IsSSH reports whether the relying party is an OpenSSH application
// ("ssh:" or "ssh:something").
func (r Request) IsSSH() bool { return strings.HasPrefix(r.RPID, "ssh:") }

// Message is the one-line text a prompt shows: who asks and for what.
// The RP ID comes from the client, so any character in it that is not
// printable (control characters, terminal escapes, bidirectional
// overrides) is shown as U+FFFD instead.
func (r Request) Message() string {
	r.RPID = printable(r.RPID)
	switch r.Op {
	case OpRegister:
		if r.IsSSH() {
			return "Create SSH key (" + r.RPID + ")"
		}
		return "Register with " + r.RPID
	case OpAuthenticate:
		if r.IsSSH() {
			return "Use SSH key (" + r.RPID + ")"
		}
		return "Sign in to " + r.RPID
	case OpReset:
		return "Reset the security key: delete every credential"
	case OpSelect:
		return "Select this security key"
	}
	return "Confirm security key operation"
}

// printable replaces every rune of s that unicode.IsPrint rejects.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if unicode.IsPrint(r) {
			return r
		}
		return unicode.ReplacementChar
	}, s)
}

// Prompter asks the user to approve req. It returns nil when the user
// approved, ErrDenied, ErrTimeout, ErrUnavailable, or ctx.Err() when the
// client cancelled (the prompt must be closed then).
type Prompter interface {
	Confirm(ctx context.Context, req Request) error
}

// Fixed answers every prompt the same way without asking anyone. It is
// for tests and must be selected explicitly (with --insecure-test-mode).
type Fixed struct {
	Allow bool
	// Delay is how long each prompt waits before it answers, as a user
	// who takes that long to touch (zero: at once). It lets outside
	// testers watch a request that waits for the user: KEEPALIVE
	// UPNEEDED, CHANNEL_BUSY for other channels, CANCEL.
	Delay time.Duration
}

// Confirm returns nil when f.Allow, else ErrDenied, after f.Delay; a
// cancelled ctx ends the wait with ctx.Err().
func (f Fixed) Confirm(ctx context.Context, _ Request) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if f.Delay > 0 {
		t := time.NewTimer(f.Delay)
		defer t.Stop()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
	if f.Allow {
		return nil
	}
	return ErrDenied
}
