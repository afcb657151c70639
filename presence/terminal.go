package presence

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// Terminal asks on a terminal: it writes the question and reads a line;
// "y" or "yes" approves, anything else denies. One reader goroutine reads
// lines for the Terminal's whole life, so an abandoned prompt never
// steals the answer meant for the next one.
type Terminal struct {
	rw      io.ReadWriter
	timeout time.Duration

	once  sync.Once
	lines chan string
	rerr  chan error
}

// NewTerminal returns a terminal prompt on rw (e.g. an opened /dev/tty).
// timeout ≤ 0 means DefaultTimeout.
func NewTerminal(rw io.ReadWriter, timeout time.Duration) *Terminal {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	return &Terminal{rw: rw, timeout: timeout}
}

func (t *Terminal) start() {
	t.lines = make(chan string)
	t.rerr = make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(t.rw)
		for sc.Scan() {
			t.lines <- sc.Text()
		}
		err := sc.Err()
		if err == nil {
			err = io.EOF
		}
		t.rerr <- err
	}()
}

// Confirm implements Prompter.
func (t *Terminal) Confirm(ctx context.Context, req Request) error {
	t.once.Do(t.start)
	// Drop lines typed before this prompt was shown.
drain:
	for {
		select {
		case <-t.lines:
		default:
			break drain
		}
	}
	secs := int(t.timeout / time.Second)
	if _, err := fmt.Fprintf(t.rw, "\ntpm-fido: %s\nAllow? [y/N] (%d s) ", req.Message(), secs); err != nil {
		return fmt.Errorf("%w: terminal: %w", ErrUnavailable, err)
	}
	timer := time.NewTimer(t.timeout)
	defer timer.Stop()
	select {
	case line := <-t.lines:
		switch strings.ToLower(strings.TrimSpace(line)) {
		case "y", "yes":
			fmt.Fprintln(t.rw, "allowed")
			return nil
		}
		fmt.Fprintln(t.rw, "denied")
		return ErrDenied
	case err := <-t.rerr:
		t.rerr <- err // stays closed for later prompts
		return fmt.Errorf("%w: terminal: %w", ErrUnavailable, err)
	case <-timer.C:
		fmt.Fprintln(t.rw, "\ntimed out")
		return ErrTimeout
	case <-ctx.Done():
		fmt.Fprintln(t.rw, "\ncancelled by the client")
		return ctx.Err()
	}
}
