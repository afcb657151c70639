package load_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/presence"
	"github.com/tpm-fido/tpm-fido/test/daemontest"
	"github.com/tpm-fido/tpm-fido/test/load/inproc"
	"github.com/tpm-fido/tpm-fido/transport"
)

const (
	clients        = 4
	fullAssertions = 10000
	fullCreds      = 500
	maxRSSGrowthKB = 5 * 1024
)

// size returns the totals of one load run (a tenth with -short).
func size() (assertions, creds int) {
	if testing.Short() {
		return fullAssertions / 10, fullCreds / 10
	}
	return fullAssertions, fullCreds
}

// stats are the figures of one load run.
type stats struct {
	assertions, creds atomic.Int64
	busyRetries       atomic.Int64
	took              time.Duration
}

func (s *stats) String() string {
	return fmt.Sprintf("%d assertions + %d makeCredentials by %d clients in %s (%.0f req/s), %d CHANNEL_BUSY retries",
		s.assertions.Load(), s.creds.Load(), clients, s.took.Round(time.Millisecond),
		float64(s.assertions.Load()+s.creds.Load())/s.took.Seconds(), s.busyRetries.Load())
}

// runLoad has `clients` clients, each on its own socket connection and
// channel, share out assertions (up=false) and makeCredentials.
func runLoad(ctx context.Context, t *testing.T, sock string, assertions, creds int) *stats {
	t.Helper()
	st := &stats{}
	t0 := time.Now()
	var wg sync.WaitGroup
	errs := make(chan error, clients)
	for c := range clients {
		na := assertions / clients
		nc := creds / clients
		if c < assertions%clients {
			na++
		}
		if c < creds%clients {
			nc++
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := client(ctx, c, sock, na, nc, st); err != nil {
				errs <- fmt.Errorf("client %d: %w", c, err)
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	st.took = time.Since(t0)
	return st
}

func client(ctx context.Context, id int, sock string, na, nc int, st *stats) error {
	c, err := ctaphidtest.DialUnix(sock, 30*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	var ch *ctaphidtest.Channel
	if err := retry(ctx, st, func() error {
		var err error
		ch, err = c.OpenChannel()
		return err
	}); err != nil {
		return fmt.Errorf("INIT: %w", err)
	}
	rp := fmt.Sprintf("load%d.example", id)
	cdh := sha256.Sum256([]byte(rp))
	var credID []byte
	mc := func(i int) error {
		return retry(ctx, st, func() error {
			ad, err := ch.MakeCredential(ctaphidtest.MakeCredentialParams(rp, fmt.Appendf(nil, "user-%d", i), cdh[:], false, false, nil))
			if err == nil {
				credID = ad.CredID
				st.creds.Add(1)
			}
			return err
		})
	}
	if nc == 0 {
		return errors.New("no makeCredential share")
	}
	if err := mc(0); err != nil {
		return fmt.Errorf("makeCredential 0: %w", err)
	}
	// Spread the remaining registrations evenly among the assertions.
	every := max(na/max(nc-1, 1), 1)
	made := 1
	var last uint32
	for i := range na {
		if made < nc && i%every == every-1 {
			if err := mc(made); err != nil {
				return fmt.Errorf("makeCredential %d: %w", made, err)
			}
			made++
		}
		err := retry(ctx, st, func() error {
			as, err := ch.GetAssertion(ctaphidtest.GetAssertionParams(rp, cdh[:], false, credID))
			if err != nil {
				return err
			}
			if !bytes.Equal(as.CredID, credID) || as.AuthData.Flags&0x01 != 0 || as.AuthData.Counter <= last {
				return fmt.Errorf("bad assertion: cred match %v flags %02x counter %d after %d",
					bytes.Equal(as.CredID, credID), as.AuthData.Flags, as.AuthData.Counter, last)
			}
			last = as.AuthData.Counter
			st.assertions.Add(1)
			return nil
		})
		if err != nil {
			return fmt.Errorf("assertion %d: %w", i, err)
		}
	}
	for ; made < nc; made++ {
		if err := mc(made); err != nil {
			return fmt.Errorf("makeCredential %d: %w", made, err)
		}
	}
	return nil
}

// retry runs f again while the device answers CHANNEL_BUSY.
func retry(ctx context.Context, st *stats, f func() error) error {
	for {
		err := f()
		if !errors.Is(err, ctaphidtest.ErrBusy) {
			return err
		}
		st.busyRetries.Add(1)
		select {
		case <-ctx.Done():
			return fmt.Errorf("still CHANNEL_BUSY: %w", ctx.Err())
		case <-time.After(time.Duration(100+rand.IntN(400)) * time.Microsecond):
		}
	}
}

// TestMain removes the daemon binary daemontest built.
func TestMain(m *testing.M) {
	code := m.Run()
	daemontest.Cleanup()
	os.Exit(code)
}

// TestLoadDaemon runs the load against the real daemon binary and checks
// its resident memory.
func TestLoadDaemon(t *testing.T) {
	dir := t.TempDir()
	spec := "simulator"
	if s, err := inproc.StartSwtpm(mkdir(t, dir, "swtpm")); err == nil {
		t.Cleanup(s.Stop)
		spec = s.Spec()
	} else {
		t.Logf("swtpm unavailable (%v); using the daemon's simulator", err)
	}
	sock := filepath.Join(dir, "run", "hid.sock")
	d := daemontest.Start(t, "--transport", "unix:"+sock, "--tpm", spec, "--state-dir", filepath.Join(dir, "state"),
		"--presence", "always-allow", "--insecure-test-mode", "--log-level", "warn")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	assertions, creds := size()
	warm := runLoad(ctx, t, sock, assertions/10, max(creds/10, clients))
	t.Logf("warm-up: %v", warm)
	before := rss(t, d.Pid())
	st := runLoad(ctx, t, sock, assertions, creds)
	time.Sleep(500 * time.Millisecond)
	after := rss(t, d.Pid())
	t.Logf("load (daemon, TPM %s): %v", strings.SplitN(spec, ":", 2)[0], st)
	t.Logf("daemon VmRSS: %d kB after warm-up, %d kB after the load (%+d kB)", before, after, after-before)
	if got, want := st.assertions.Load(), int64(assertions); got != want {
		t.Errorf("%d assertions succeeded, want %d", got, want)
	}
	if got, want := st.creds.Load(), int64(creds); got != want {
		t.Errorf("%d makeCredentials succeeded, want %d", got, want)
	}
	if after-before >= maxRSSGrowthKB {
		t.Errorf("resident memory grew by %d kB (limit %d kB)", after-before, maxRSSGrowthKB)
	}
}

// TestLoadGoroutines runs the same load against the same packages in
// process and checks that every goroutine the load started is gone.
func TestLoadGoroutines(t *testing.T) {
	tpm, err := inproc.OpenTPM("simulator")
	if err != nil {
		t.Skipf("TPM simulator unavailable: %v", err)
	}
	defer tpm.Close()
	dir := t.TempDir()
	stack, err := inproc.New(inproc.Config{TPM: tpm, Dir: filepath.Join(dir, "state"), Presence: presence.Fixed{Allow: true}})
	if err != nil {
		t.Fatal(err)
	}
	defer stack.Close()
	sock := filepath.Join(dir, "run", "hid.sock")
	dev, err := transport.ListenUnix(sock, nil)
	if err != nil {
		t.Fatal(err)
	}
	stop := stack.Serve(context.Background(), dev)
	defer stop()
	waitReady(t, sock)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()

	warm := runLoad(ctx, t, sock, 40, clients)
	t.Logf("warm-up: %v", warm)
	before := settledGoroutines(-1)
	assertions, creds := size()
	st := runLoad(ctx, t, sock, assertions, creds)
	t.Logf("load (in process, TPM simulator): %v", st)
	after := settledGoroutines(before)
	t.Logf("goroutines: %d before the load, %d after", before, after)
	if after > before {
		buf := make([]byte, 1<<20)
		t.Errorf("goroutine leak: %d before, %d after the load\n%s", before, after, buf[:runtime.Stack(buf, true)])
	}
	if got := st.assertions.Load() + st.creds.Load(); got != int64(assertions+creds) {
		t.Errorf("%d requests succeeded, want %d", got, assertions+creds)
	}
}

// settledGoroutines waits (up to 5 s) for the goroutine count to drop to
// target (or, with target < 0, to stop changing) and returns it.
func settledGoroutines(target int) int {
	n := runtime.NumGoroutine()
	for range 100 {
		time.Sleep(50 * time.Millisecond)
		m := runtime.NumGoroutine()
		if (target >= 0 && m <= target) || (target < 0 && m == n) {
			return m
		}
		n = m
	}
	return n
}

func waitReady(t *testing.T, sock string) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for time.Now().Before(deadline) {
		if c, err := ctaphidtest.DialUnix(sock, 2*time.Second); err == nil {
			_, err := c.Init()
			c.Close()
			if err == nil {
				return
			}
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("%s did not answer INIT within 30 s", sock)
}

func rss(t *testing.T, pid int) int {
	t.Helper()
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "VmRSS:"); ok {
			n, err := strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatal("no VmRSS")
	return 0
}

func mkdir(t *testing.T, parts ...string) string {
	t.Helper()
	p := filepath.Join(parts...)
	if err := os.MkdirAll(p, 0o700); err != nil {
		t.Fatal(err)
	}
	return p
}
