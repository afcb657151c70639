package browser

import (
	"context"
	"fmt"
	"strings"
	"sync"
)

// Browser is one browser under test, driven as a person would: it shows
// the relying party's page, and Watch answers the browser's own WebAuthn
// dialogs (PIN entry and setup, account choice, attestation consent) while
// a ceremony runs.
type Browser interface {
	Name() string
	// Start launches the browser on url.
	Start(ctx context.Context, url string) error
	// Open opens url again, as a user would when a page stays blank.
	Open(ctx context.Context, url string) error
	// Watch handles the browser's WebAuthn UI until ctx ends, typing pin
	// where one is asked for. Wait on the result before reading it.
	Watch(ctx context.Context, pin string) *UI
	// SetPIN sets a first PIN on the key through the browser's own
	// settings UI; ErrNoPINSettings when the browser offers its PIN setup
	// only inside a ceremony.
	SetPIN(ctx context.Context, pin string) error
	Stop() error
}

// ErrNoPINSettings: the browser has no separate PIN settings page.
var ErrNoPINSettings = fmt.Errorf("the browser sets a PIN only inside a ceremony")

// What a UI watcher saw and did, by tag.
const (
	UIPinSetup      = "pin-setup"       // typed a new PIN (and its confirmation)
	UIPinEntry      = "pin-entry"       // typed the PIN
	UIAccount       = "account-chooser" // picked the account
	UIAttestation   = "attestation-consent"
	UIPinNotSet     = "pin-not-set"  // the browser said the key needs a PIN first
	UIErrorShown    = "error-closed" // the browser showed an error; the user closed it
	UIPresenceShown = "touch-prompt"
)

// UI records one Watch.
type UI struct {
	mu    sync.Mutex
	steps []string // raw browser UI states, in order
	tags  []string
	errs  []error
	done  chan struct{}
}

func newUI() *UI { return &UI{done: make(chan struct{})} }

func (u *UI) step(s string) {
	u.mu.Lock()
	if n := len(u.steps); n == 0 || u.steps[n-1] != s {
		u.steps = append(u.steps, s)
	}
	u.mu.Unlock()
}

func (u *UI) tag(t string) {
	u.mu.Lock()
	u.tags = append(u.tags, t)
	u.mu.Unlock()
}

func (u *UI) fail(err error) {
	u.mu.Lock()
	u.errs = append(u.errs, err)
	u.mu.Unlock()
}

// Wait waits for the watcher to finish.
func (u *UI) Wait() { <-u.done }

// Has reports whether the watcher did or saw tag.
func (u *UI) Has(tag string) bool {
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, t := range u.tags {
		if t == tag {
			return true
		}
	}
	return false
}

// Err is the first error the watcher met (a key it could not type...).
func (u *UI) Err() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	if len(u.errs) > 0 {
		return u.errs[0]
	}
	return nil
}

// String is a one-line account for the test output.
func (u *UI) String() string {
	u.mu.Lock()
	defer u.mu.Unlock()
	s := "browser UI: " + strings.Join(u.steps, " > ")
	if len(u.steps) == 0 {
		s = "browser UI: (no dialog)"
	}
	if len(u.tags) > 0 {
		s += " [" + strings.Join(u.tags, ", ") + "]"
	}
	return s
}
