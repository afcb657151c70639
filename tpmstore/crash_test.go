package tpmstore

import (
	"bufio"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	mrand "math/rand/v2"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
)

const (
	crashEnvChild = "TPMSTORE_CRASH_CHILD"
	crashEnvTPM   = "TPMSTORE_CRASH_TPM"
	crashEnvDir   = "TPMSTORE_CRASH_DIR"
	crashRP       = "crash.example"
)

// crashSeeded is how many resident credentials the store holds before
// each child starts, so the child's first PutResident adds the 10,000th
// and its second one meets the default capacity.
const crashSeeded = DefaultMaxResidents - 1

// TestCrash: a child process creating credentials, writing resident
// credentials and taking signature counter values is SIGKILLed at random
// points 200 times, with the store full but for one: every child adds
// the 10,000th resident credential (then is refused the 10,001st), and
// one kill in three falls a few hundred microseconds after it started
// that write. After each kill the store must open, every acknowledged
// resident credential must be there, the kept counts must match, and
// the counter must never repeat or go back. The parent then deletes what
// the child added, so the next child adds the 10,000th again. The TPM is
// a swtpm process so it survives the kills.
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
	seeded := seedCrashState(t, tpm, dir)
	var maxCounter uint32
	rng := mrand.New(mrand.NewPCG(uint64(time.Now().UnixNano()), 1))
	start := time.Now()
	var firstLine, reopen time.Duration
	var acked, inWindow, inWindowKept, full int
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
		// Kill after a random number of output lines; or, one time in
		// five, after a random delay (which may fall inside Open); or,
		// one time in three, a random 0-2 ms after the child started
		// writing the 10,000th credential.
		killAfter := 1 + rng.IntN(16)
		var timer <-chan time.Time
		afterPut := time.Duration(-1)
		switch r := rng.IntN(15); {
		case r < 3:
			timer = time.After(time.Duration(rng.IntN(30)) * time.Millisecond)
			killAfter = -1
		case r < 8:
			afterPut = time.Duration(rng.IntN(2000)) * time.Microsecond
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
		var puts []string // this child's credentials, in order
		ackedNow := map[string]bool{}
		handle := func(line string) {
			switch {
			case strings.HasPrefix(line, "PUT "):
				puts = append(puts, strings.TrimPrefix(line, "PUT "))
				if afterPut >= 0 {
					timer = time.After(afterPut)
					afterPut = -1
				}
			case strings.HasPrefix(line, "ACK "):
				ackedNow[strings.TrimPrefix(line, "ACK ")] = true
			case line == "FULL":
				full++
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
		s, err := Open(Config{TPM: tpm, Dir: dir})
		if err != nil {
			t.Fatalf("kill %d: Open after kill: %v", k, err)
		}
		var present [][]byte
		for _, idHex := range puts {
			id, _ := hex.DecodeString(idHex)
			_, err := s.Resident(id)
			switch {
			case err == nil:
				present = append(present, id)
			case !errors.Is(err, ErrNotFound):
				t.Fatalf("kill %d: %v", k, err)
			case ackedNow[idHex]:
				t.Fatalf("kill %d: acknowledged resident credential %s missing", k, idHex)
			}
		}
		if len(puts) > 0 && !ackedNow[puts[len(puts)-1]] && len(puts) == 1 {
			inWindow++ // killed between starting the write and its acknowledgement
			if len(present) == 1 {
				inWindowKept++
			}
		}
		acked += len(ackedNow)
		if len(present) > 1 {
			t.Fatalf("kill %d: %d credentials added to a store with room for one", k, len(present))
		}
		n, err := s.ResidentCount()
		if err != nil || n != crashSeeded+len(present) {
			t.Fatalf("kill %d: kept count %d (%v), want %d", k, n, err, crashSeeded+len(present))
		}
		if k%25 == 0 || k == kills-1 {
			checkResidentLayout(t, s)
		}
		maxCounter = nextCounterAbove(t, s, maxCounter, fmt.Sprintf("kill %d: after reopen", k))
		// Back to 9,999, so that the next child adds the 10,000th again.
		for _, id := range present {
			if err := s.DeleteResident(id); err != nil {
				t.Fatal(err)
			}
		}
		if k == kills-1 {
			for _, id := range seeded {
				if _, err := s.Resident(id); err != nil {
					t.Fatalf("seeded resident credential %x: %v", id[:8], err)
				}
			}
		}
		if err := s.Close(); err != nil {
			t.Fatal(err)
		}
		reopen += time.Since(reopenStart)
	}
	t.Logf("time to the child's first line %v in total, parent checks %v in total",
		firstLine.Round(time.Millisecond), reopen.Round(time.Millisecond))
	t.Logf("%d kills in %v over %d resident credentials: %d acknowledged 10,000th credentials kept, %d refused as the 10,001st, counter reached %d",
		kills, time.Since(start).Round(time.Millisecond), crashSeeded, acked, full, maxCounter)
	t.Logf("%d kills fell between the start of the 10,000th credential's write and its acknowledgement (%d of those writes had committed)",
		inWindow, inWindowKept)
}

// seedCrashState fills dir with crashSeeded resident credentials over
// 1,000 RPs and returns their IDs.
func seedCrashState(t *testing.T, tpm transport.TPM, dir string) [][]byte {
	s, err := Open(Config{TPM: tpm, Dir: dir})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	var rs []Resident
	var ids [][]byte
	for i := range crashSeeded {
		r := genResident(fmt.Sprintf("rp%03d.example", i%1000), fmt.Sprintf("seed-%d", i), uint8(1+i%3))
		rs = append(rs, r)
		ids = append(ids, r.CredentialID)
	}
	putResidentsBulk(t, s, rs)
	return ids
}

// crashChild runs in the child process until it is killed.
func crashChild(t *testing.T) {
	tpm, err := OpenTPM(os.Getenv(crashEnvTPM))
	if err != nil {
		fmt.Printf("ERR %v\n", err)
		return
	}
	s, err := Open(Config{TPM: tpm, Dir: os.Getenv(crashEnvDir)})
	if err != nil {
		fmt.Printf("ERR open: %v\n", err)
		return
	}
	rp := rpHash(crashRP)
	full := false
	for i := 0; i < 1000; i++ {
		c, err := s.CreateCredential(rp, CredentialOptions{Resident: true})
		if err != nil {
			fmt.Printf("ERR create: %v\n", err)
			return
		}
		if !full {
			r := testResident(t, c, fmt.Sprintf("%d-%d", os.Getpid(), i), time.Now())
			r.RPID = crashRP
			fmt.Printf("PUT %s\n", hex.EncodeToString(c.ID))
			switch err := s.PutResident(r); {
			case errors.Is(err, ErrStoreFull):
				fmt.Println("FULL")
				full = true
			case err != nil:
				fmt.Printf("ERR put: %v\n", err)
				return
			default:
				fmt.Printf("ACK %s\n", hex.EncodeToString(c.ID))
			}
		}
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
