package u2f

import (
	"context"
	"crypto/sha256"
	"errors"
	"log/slog"
	"sync"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/presence"
)

// U2F clients poll: they send a request, get SW_CONDITIONS_NOT_SATISFIED
// until the user has touched the key, and send the very same request
// again. A hardware key lights up and the next request after the touch
// succeeds. The daemon's prompt is a dialog instead, and a request may be
// cut short by the client (CTAPHID_CANCEL, a client-side timeout) while
// the dialog is open; the retry must not open a second dialog.
//
// presenceGate therefore keeps at most one prompt, bound to a key that is
// SHA-256(instruction ‖ application ‖ challenge ‖ key handle):
//
//   - A request whose key matches the open prompt waits for that prompt
//     instead of opening another one.
//   - A "yes" is used by exactly one request with the same key: the one
//     waiting when the answer came, or, when that one was gone, the first
//     retry within the approval window. It never serves another appId,
//     another challenge or another key handle, and it expires.
//   - A "no" answers the same key with SW_CONDITIONS_NOT_SATISFIED for the
//     window, so a polling client does not reopen the dialog at once.
//   - A prompt nobody waits for is closed after the window; a request
//     with another key closes an unattended prompt and opens its own, and
//     while a prompt is attended another key is told to try again.
//   - Every other outcome (timeout, backend missing, cancelled) is
//     forgotten: the next request asks again.
type presenceGate struct {
	prompter presence.Prompter
	now      func() time.Time
	window   time.Duration
	timeout  time.Duration
	log      *slog.Logger

	mu      sync.Mutex
	current *pendingPrompt
}

type gateKeyT [32]byte

func gateKey(ins byte, app, challenge [32]byte, kh []byte) gateKeyT {
	d := sha256.New()
	d.Write([]byte{ins})
	d.Write(app[:])
	d.Write(challenge[:])
	d.Write(kh)
	var k gateKeyT
	d.Sum(k[:0])
	return k
}

type pendingPrompt struct {
	key      gateKeyT
	done     chan struct{}
	cancel   context.CancelFunc
	grace    *time.Timer
	waiters  int
	err      error     // set before done is closed
	answered time.Time // set before done is closed
	used     bool      // an approval has been handed out
}

func (p *pendingPrompt) isDone() bool {
	select {
	case <-p.done:
		return true
	default:
		return false
	}
}

var errNotSatisfied = swError(SWConditionsNotSatisfied)

// confirm returns nil when the user approved this request, and
// SW_CONDITIONS_NOT_SATISFIED (as an error) otherwise.
func (g *presenceGate) confirm(ctx context.Context, op presence.Operation, app [32]byte, key gateKeyT) error {
	g.mu.Lock()
	p := g.current
	if p != nil && p.key != key {
		if !p.isDone() && p.waiters > 0 {
			g.mu.Unlock()
			return errNotSatisfied
		}
		g.drop(p)
		p = nil
	}
	if p != nil && p.isDone() {
		expired := g.now().Sub(p.answered) > g.window
		switch {
		case expired || p.used:
			g.drop(p)
			p = nil
		case p.err == nil:
			p.used = true
			g.drop(p)
			g.mu.Unlock()
			return nil
		default: // a remembered "no"
			g.mu.Unlock()
			return errNotSatisfied
		}
	}
	if p == nil {
		p = g.start(op, app, key)
	}
	p.waiters++
	if p.grace != nil {
		p.grace.Stop()
		p.grace = nil
	}
	g.mu.Unlock()

	ctap.SetKeepalive(ctx, ctap.KeepaliveUPNeeded)
	select {
	case <-p.done:
	case <-ctx.Done():
	}

	g.mu.Lock()
	defer g.mu.Unlock()
	p.waiters--
	if ctx.Err() != nil {
		// The client gave up on this request. Keep the prompt (or its
		// answer) for a retry within the window.
		if !p.isDone() && p.waiters == 0 && g.current == p {
			p.grace = time.AfterFunc(g.window, p.cancel)
		}
		return errNotSatisfied
	}
	if p.err != nil || p.used {
		return errNotSatisfied
	}
	p.used = true
	if g.current == p {
		g.drop(p)
	}
	return nil
}

// start opens a prompt in the background. Called with g.mu held.
func (g *presenceGate) start(op presence.Operation, app [32]byte, key gateKeyT) *pendingPrompt {
	pctx, cancel := context.WithTimeout(context.Background(), g.timeout)
	p := &pendingPrompt{key: key, done: make(chan struct{}), cancel: cancel}
	g.current = p
	req := presence.Request{Op: op, RPID: siteLabel(app), Challenge: key[:]}
	go func() {
		err := g.prompter.Confirm(pctx, req)
		cancel()
		g.mu.Lock()
		defer g.mu.Unlock()
		p.err = err
		p.answered = g.now()
		if p.grace != nil {
			p.grace.Stop()
			p.grace = nil
		}
		close(p.done)
		switch {
		case err == nil, errors.Is(err, presence.ErrDenied):
			// Remembered for the window (see the type's comment).
		default:
			if !errors.Is(err, context.Canceled) && !errors.Is(err, context.DeadlineExceeded) {
				g.log.Warn("u2f presence prompt failed", "err", err)
			}
			if g.current == p {
				g.current = nil
			}
		}
	}()
	return p
}

// drop forgets p, closing its prompt if still open. Called with g.mu held.
func (g *presenceGate) drop(p *pendingPrompt) {
	if g.current == p {
		g.current = nil
	}
	if p.grace != nil {
		p.grace.Stop()
		p.grace = nil
	}
	p.cancel()
}
