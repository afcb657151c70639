package tpmstore

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"
)

const (
	crashEnvChild = "TPMSTORE_CRASH_CHILD"
	crashEnvTPM   = "TPMSTORE_CRASH_TPM"
	crashEnvDir   = "TPMSTORE_CRASH_DIR"
	crashRP       = "crash.example"
)

// TestCrash is acceptance test 4: a child process creating credentials,
// writing resident credentials and taking signature counter values is
// SIGKILLed at random points 200 times. After each kill the store must
// open, every acknowledged resident credential must be there, and the
// counter must never repeat or go back. The TPM is a swtpm process so it
// survives the kills.
func TestCrash(t *testing.T) {
	if os.Getenv(crashEnvChild) != "" {
		crashChild(t)
		return
	}
	if _, err := exec.LookPath("swtpm"); err != nil {
		t.Skip("swtpm not on PATH")
	}
	kills := 200
	if testing.Short() {
		kills = 20
	}
	tpm, spec := startSWTPM(t)
	dir := t.TempDir()
	acked := map[string]bool{}
	var maxCounter uint32
	rng := mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), 1))
	start := time.Now()
	var firstLine, reopen time.Duration
	for k := 0; k < kills; k++ {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCrash$")
		cmd.Env = append(os.Environ(), "GORACE=atexit_sleep_ms=0", crashEnvChild+"=1", crashEnvTPM+"="+spec, crashEnvDir+"="+dir)
		var stderr strings.Builder
		cmd.Stderr = &stderr
		out, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		childStart := time.Now()
		lines := make(chan string)
		go func() {
			sc := bufio.NewScanner(out)
			for sc.Scan() {
				lines <- sc.Text()
			}
			close(lines)
		}()
		// Kill after a random number of output lines, or, one time in
		// five, after a random delay (which may fall inside Open).
		killAfter := 1 + rng.IntN(16)
		var timer <-chan time.Time
		if rng.IntN(5) == 0 {
			timer = time.After(time.Duration(rng.IntN(30)) * time.Millisecond)
			killAfter = -1
		}
		deadline := time.After(20 * time.Second)
		seen, killed := 0, false
		kill := func() {
			if !killed {
				cmd.Process.Signal(syscall.SIGKILL)
				killed = true
			}
		}
		handle := func(line string) {
			switch {
			case strings.HasPrefix(line, "ACK "):
				acked[strings.TrimPrefix(line, "ACK ")] = true
			case strings.HasPrefix(line, "CTR "):
				v, err := strconv.ParseUint(strings.TrimPrefix(line, "CTR "), 10, 32)
				if err != nil {
					t.Fatalf("child said %q", line)
				}
				if uint32(v) <= maxCounter {
					t.Fatalf("kill %d: counter %d not above %d seen before", k, v, maxCounter)
				}
				maxCounter = uint32(v)
			case strings.HasPrefix(line, "ERR "):
				t.Fatalf("kill %d: child: %s", k, line)
			}
		}
	loop:
		for {
			select {
			case line, ok := <-lines:
				if !ok {
					break loop
				}
				handle(line)
				if seen == 0 {
					firstLine += time.Since(childStart)
				}
				seen++
				if seen == killAfter {
					kill()
				}
			case <-timer:
				kill()
			case <-deadline:
				kill()
				t.Errorf("kill %d: child stuck after %d lines; stderr:\n%s", k, seen, stderr.String())
			}
		}
		kill()
		cmd.Wait()

		// The parent opens the store after every kill.
		reopenStart := time.Now()
		s, err := Open(Config{TPM: tpm, Dir: dir, MaxResidents: 1 << 20})
		if err != nil {
			t.Fatalf("kill %d: Open after kill: %v", k, err)
		}
		res, err := s.Residents(rpHash(crashRP))
		if err != nil {
			t.Fatalf("kill %d: %v", k, err)
		}
		have := map[string]bool{}
		for _, r := range res {
			have[hex.EncodeToString(r.CredentialID)] = true
		}
		for id := range acked {
			if !have[id] {
				t.Fatalf("kill %d: acknowledged resident credential %s missing", k, id)
			}
		}
		c, err := s.NextCounter()
		if err != nil {
			t.Fatal(err)
		}
		if c <= maxCounter {
			t.Fatalf("kill %d: counter after reopen %d, not above %d", k, c, maxCounter)
		}
		maxCounter = c
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		reopen += time.Since(reopenStart)
	}
	t.Logf("time to the child's first line %v in total, parent checks %v in total",
		firstLine.Round(time.Millisecond), reopen.Round(time.Millisecond))
	t.Logf("%d kills in %v: %d acknowledged resident credentials kept, counter reached %d",
		kills, time.Since(start).Round(time.Millisecond), len(acked), maxCounter)
}

// crashChild runs in the child process until it is killed.
func crashChild(t *testing.T) {
	tpm, err := OpenTPM(os.Getenv(crashEnvTPM))
	if err != nil {
		fmt.Printf("ERR %v\n", err)
		return
	}
	s, err := Open(Config{TPM: tpm, Dir: os.Getenv(crashEnvDir), MaxResidents: 1 << 20})
	if err != nil {
		fmt.Printf("ERR open: %v\n", err)
		return
	}
	rp := rpHash(crashRP)
	for i := 0; i < 1000; i++ {
		c, err := s.CreateCredential(rp, CredentialOptions{Resident: true})
		if err != nil {
			fmt.Printf("ERR create: %v\n", err)
			return
		}
		r := testResident(t, c, fmt.Sprintf("%d-%d", os.Getpid(), i), time.Now())
		r.RPID = crashRP
		if err := s.PutResident(r); err != nil {
			fmt.Printf("ERR put: %v\n", err)
			return
		}
		fmt.Printf("ACK %s\n", hex.EncodeToString(c.ID))
		for j := 0; j < 3; j++ {
			n, err := s.NextCounter()
			if err != nil {
				fmt.Printf("ERR counter: %v\n", err)
				return
			}
			d := sha256.Sum256([]byte{byte(j)})
			if _, err := s.Sign(c, d[:]); err != nil {
				fmt.Printf("ERR sign: %v\n", err)
				return
			}
			fmt.Printf("CTR %d\n", n)
		}
	}
}
