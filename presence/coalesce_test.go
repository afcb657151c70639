package presence

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"
)

// gatePrompter counts prompts and answers each one with what is sent on
// answer.
type gatePrompter struct {
	calls  atomic.Int32
	shown  chan Request
	answer chan error
}

func newGate() *gatePrompter {
	return &gatePrompter{shown: make(chan Request, 8), answer: make(chan error)}
}

func (g *gatePrompter) Confirm(ctx context.Context, req Request) error {
	g.calls.Add(1)
	g.shown <- req
	select {
	case err := <-g.answer:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) add(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func TestCoalesceIdenticalConcurrent(t *testing.T) {
	g := newGate()
	c := NewCoalescer(g, time.Second, (&fakeClock{t: time.Unix(1, 0)}).now)
	req := Request{Op: OpAuthenticate, RPID: "github.com"}
	errs := make(chan error, 2)
	go func() { errs <- c.Confirm(context.Background(), req) }()
	<-g.shown
	go func() { errs <- c.Confirm(context.Background(), req) }()
	// The second request must wait on the open prompt, not open its own.
	select {
	case <-g.shown:
		t.Fatal("a second prompt opened for an identical request")
	case <-time.After(50 * time.Millisecond):
	}
	g.answer <- nil
	for range 2 {
		if err := <-errs; err != nil {
			t.Fatalf("Confirm = %v, want nil", err)
		}
	}
	if n := g.calls.Load(); n != 1 {
		t.Fatalf("%d prompts, want 1", n)
	}
}

func TestCoalesceDifferentRPsPromptTwice(t *testing.T) {
	g := newGate()
	c := NewCoalescer(g, time.Second, (&fakeClock{t: time.Unix(1, 0)}).now)
	errs := make(chan error, 2)
	go func() { errs <- c.Confirm(context.Background(), Request{Op: OpAuthenticate, RPID: "a.example"}) }()
	first := <-g.shown
	go func() { errs <- c.Confirm(context.Background(), Request{Op: OpAuthenticate, RPID: "b.example"}) }()
	g.answer <- nil // approve a.example only
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	second := <-g.shown
	if first.RPID == second.RPID {
		t.Fatalf("both prompts for %q", first.RPID)
	}
	g.answer <- ErrDenied
	if err := <-errs; !errors.Is(err, ErrDenied) {
		t.Fatalf("b.example: Confirm = %v, want ErrDenied (no approval shared across RPs)", err)
	}
	if n := g.calls.Load(); n != 2 {
		t.Fatalf("%d prompts, want 2", n)
	}
}

func TestCoalesceRetryAfterYes(t *testing.T) {
	g := newGate()
	clk := &fakeClock{t: time.Unix(1, 0)}
	c := NewCoalescer(g, 2*time.Second, clk.now)
	req := Request{Op: OpAuthenticate, RPID: "github.com"}
	ask := func(r Request) chan error {
		e := make(chan error, 1)
		go func() { e <- c.Confirm(context.Background(), r) }()
		return e
	}
	e := ask(req)
	<-g.shown
	g.answer <- nil
	if err := <-e; err != nil {
		t.Fatal(err)
	}
	clk.add(time.Second)
	// The retry within the window is approved without a prompt...
	if err := <-ask(req); err != nil {
		t.Fatalf("retry: %v", err)
	}
	// ...once only.
	e = ask(req)
	<-g.shown
	g.answer <- ErrDenied
	if err := <-e; !errors.Is(err, ErrDenied) {
		t.Fatalf("second retry = %v, want a new prompt answered ErrDenied", err)
	}
	// Another op on the same RP, or after the window, prompts again.
	e = ask(req)
	<-g.shown
	g.answer <- nil
	<-e
	e = ask(Request{Op: OpRegister, RPID: "github.com"})
	<-g.shown
	g.answer <- ErrDenied
	if err := <-e; !errors.Is(err, ErrDenied) {
		t.Fatalf("register after sign-in approval = %v, want its own prompt", err)
	}
	e = ask(req)
	<-g.shown
	g.answer <- nil
	<-e
	clk.add(3 * time.Second)
	e = ask(req)
	<-g.shown
	g.answer <- ErrTimeout
	if err := <-e; !errors.Is(err, ErrTimeout) {
		t.Fatalf("after the window = %v, want its own prompt", err)
	}
	if n := g.calls.Load(); n != 6 {
		t.Fatalf("%d prompts, want 6", n)
	}
}

func TestCoalesceCancelledOwnerHandsOver(t *testing.T) {
	// The first requester cancels (the browser sent CANCEL); an identical
	// waiter gets its own prompt rather than the cancellation.
	g := newGate()
	c := NewCoalescer(g, time.Second, nil)
	req := Request{Op: OpRegister, RPID: "github.com"}
	ctx1, cancel1 := context.WithCancel(context.Background())
	e1 := make(chan error, 1)
	go func() { e1 <- c.Confirm(ctx1, req) }()
	<-g.shown
	e2 := make(chan error, 1)
	go func() { e2 <- c.Confirm(context.Background(), req) }()
	time.Sleep(20 * time.Millisecond) // let it queue behind the open prompt
	cancel1()
	if err := <-e1; !errors.Is(err, context.Canceled) {
		t.Fatalf("first = %v", err)
	}
	<-g.shown
	g.answer <- nil
	if err := <-e2; err != nil {
		t.Fatalf("second = %v, want nil from its own prompt", err)
	}
}

// allow-after:D approves after D, needs --insecure-test-mode, and a
// cancelled request stops waiting at once.
func TestNewAllowAfter(t *testing.T) {
	if _, err := New("allow-after:50ms", Options{}); !errors.Is(err, ErrInsecure) {
		t.Fatalf("allow-after without insecure mode: %v, want ErrInsecure", err)
	}
	for _, bad := range []string{"allow-after:", "allow-after:soon", "allow-after:0s", "allow-after:-1s", "allow-after:31s"} {
		if _, err := New(bad, Options{InsecureTestMode: true}); err == nil || errors.Is(err, ErrInsecure) {
			t.Errorf("%s: %v, want a parse error", bad, err)
		}
	}
	p, err := New("allow-after:50ms", Options{InsecureTestMode: true})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := p.Confirm(context.Background(), Request{Op: OpAuthenticate, RPID: "a", Challenge: []byte{1}}); err != nil {
		t.Fatalf("allow-after: %v", err)
	}
	if d := time.Since(start); d < 50*time.Millisecond {
		t.Fatalf("approved after %v, before the 50ms delay", d)
	}
	p, err = New("allow-after:10s", Options{InsecureTestMode: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- p.Confirm(ctx, Request{Op: OpAuthenticate, RPID: "a", Challenge: []byte{2}}) }()
	cancel()
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("cancelled allow-after: %v, want context.Canceled", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("cancelled allow-after prompt still waiting")
	}
}

func TestNewFixedNeedsInsecure(t *testing.T) {
	if _, err := New(BackendAlwaysAllow, Options{}); !errors.Is(err, ErrInsecure) {
		t.Fatalf("always-allow without insecure mode: %v, want ErrInsecure", err)
	}
	p, err := New(BackendAlwaysDeny, Options{InsecureTestMode: true})
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Confirm(context.Background(), Request{}); !errors.Is(err, ErrDenied) {
		t.Fatalf("always-deny: %v", err)
	}
	if _, err := New("sometimes", Options{}); err == nil {
		t.Fatal("unknown backend accepted")
	}
}

func TestChooseNothing(t *testing.T) {
	opts := Options{
		BusAddress: "unix:path=/nonexistent/bus",
		LookPath:   func(string) (string, error) { return "", errors.New("none") },
		Getenv:     func(string) string { return "" },
		TTYPath:    "/nonexistent/tty",
	}
	if _, err := Choose(BackendAuto, opts); !errors.Is(err, ErrUnavailable) {
		t.Fatalf("Choose = %v, want ErrUnavailable", err)
	}
	prog, _, _ := fakePinentry(t, "allow")
	opts.LookPath = func(n string) (string, error) { return prog, nil }
	if got, err := Choose(BackendAuto, opts); err != nil || got.Backend != BackendPinentry || got.Program != prog {
		t.Fatalf("Choose with pinentry = %+v, %v", got, err)
	}
}

func TestCoalesceReuseNeedsSameChallenge(t *testing.T) {
	g := newGate()
	c := NewCoalescer(g, 2*time.Second, (&fakeClock{t: time.Unix(1, 0)}).now)
	ask := func(r Request) chan error {
		e := make(chan error, 1)
		go func() { e <- c.Confirm(context.Background(), r) }()
		return e
	}
	a := Request{Op: OpAuthenticate, RPID: "ssh:", Challenge: []byte("host A")}
	b := Request{Op: OpAuthenticate, RPID: "ssh:", Challenge: []byte("host B")}
	e := ask(a)
	<-g.shown
	g.answer <- nil
	if err := <-e; err != nil {
		t.Fatal(err)
	}
	// Another request for the same RP gets its own prompt.
	e = ask(b)
	select {
	case <-g.shown:
	case err := <-e:
		t.Fatalf("other challenge answered %v without a prompt (approval reused)", err)
	}
	g.answer <- ErrDenied
	if err := <-e; !errors.Is(err, ErrDenied) {
		t.Fatalf("other challenge = %v, want its own prompt answered ErrDenied", err)
	}
	if n := g.calls.Load(); n != 2 {
		t.Fatalf("%d prompts, want 2", n)
	}
}
