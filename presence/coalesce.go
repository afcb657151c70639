package presence

import (
	"context"
	"errors"
	"sync"
	"time"
)

// DefaultReuseWindow is how long after a "yes" the same request (same
// operation, relying party and challenge) may be answered again without a
// second prompt, once. It covers a client that retries one request.
const DefaultReuseWindow = 2 * time.Second

// Coalescer wraps a Prompter so that only one prompt is open at a time and
// one request retried by a client shows one prompt:
//
//   - A request identical (same Op, RPID and Challenge) to the prompt now open waits
//     for that prompt and shares its answer.
//   - A request identical to one approved less than the reuse window ago is
//     approved without a prompt, once: the approval is used up by it.
//   - Any other request waits for the open prompt to finish, then prompts.
//
// An answer is never shared across relying parties or operations.
type Coalescer struct {
	p      Prompter
	window time.Duration
	now    func() time.Time

	sem chan struct{} // holds one token while a prompt is open

	mu       sync.Mutex
	open     *flight
	lastKey  key
	lastTime time.Time
	lastOK   bool // an unused approval for lastKey exists
}

type key struct {
	op        Operation
	rpID      string
	challenge string
}

type flight struct {
	key  key
	done chan struct{}
	err  error
}

// NewCoalescer wraps p. window ≤ 0 means DefaultReuseWindow; now == nil
// means time.Now.
func NewCoalescer(p Prompter, window time.Duration, now func() time.Time) *Coalescer {
	if window <= 0 {
		window = DefaultReuseWindow
	}
	if now == nil {
		now = time.Now
	}
	return &Coalescer{p: p, window: window, now: now, sem: make(chan struct{}, 1)}
}

// Confirm implements Prompter.
func (c *Coalescer) Confirm(ctx context.Context, req Request) error {
	k := key{req.Op, req.RPID, string(req.Challenge)}
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		c.mu.Lock()
		if c.lastOK && c.lastKey == k && c.now().Sub(c.lastTime) < c.window {
			c.lastOK = false // one reuse only
			c.mu.Unlock()
			return nil
		}
		if f := c.open; f != nil && f.key == k {
			c.mu.Unlock()
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-f.done:
			}
			// The prompt's own requester went away: its cancellation is
			// not our answer, so ask again.
			if errors.Is(f.err, context.Canceled) || errors.Is(f.err, context.DeadlineExceeded) {
				continue
			}
			if f.err == nil {
				// Sharing the answer uses up the approval's one reuse.
				c.mu.Lock()
				if c.lastKey == k {
					c.lastOK = false
				}
				c.mu.Unlock()
			}
			return f.err
		}
		c.mu.Unlock()

		select {
		case <-ctx.Done():
			return ctx.Err()
		case c.sem <- struct{}{}:
		}
		c.mu.Lock()
		if c.open != nil { // cannot happen: the token guards it
			c.mu.Unlock()
			<-c.sem
			continue
		}
		// Re-check a fresh approval that landed while we waited.
		if c.lastOK && c.lastKey == k && c.now().Sub(c.lastTime) < c.window {
			c.lastOK = false
			c.mu.Unlock()
			<-c.sem
			return nil
		}
		f := &flight{key: k, done: make(chan struct{})}
		c.open = f
		c.mu.Unlock()

		err := c.p.Confirm(ctx, req)

		c.mu.Lock()
		f.err = err
		c.open = nil
		c.lastKey, c.lastTime, c.lastOK = k, c.now(), err == nil
		c.mu.Unlock()
		close(f.done)
		<-c.sem
		return err
	}
}
