package main

import (
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/presence"
	"github.com/tpm-fido/tpm-fido/test/load/inproc"
)

func medianInt(v []int) int {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[len(s)/2]
}

// abSide is one of the two stores an interleaved comparison alternates
// between: its own swtpm, seeded state, in-process stack and client.
type abSide struct {
	n         int
	spec      string // its swtpm
	dir       string
	stateDir  string
	capacity  int
	c         *scaleClient
	st        *inproc.Stack
	close     []func() // the in-process stack and its client
	stopTPM   func()
	user      int
	disc      []time.Duration
	mk        []time.Duration
	starts    []time.Duration
	infos     []time.Duration // start to the first getInfo answered
	rssIdleKB []int
}

// stopStack closes the in-process stack (the swtpm keeps running).
func (s *abSide) stopStack() {
	for i := len(s.close) - 1; i >= 0; i-- {
		s.close[i]()
	}
	s.close = nil
}

func (s *abSide) shut() {
	s.stopStack()
	s.stopTPM()
}

// openABSide seeds n credentials over rps RPs on a new swtpm and serves
// them in process.
func openABSide(ctx context.Context, dir string, n, rps int, log *slog.Logger) (*abSide, error) {
	s := &abSide{n: n, dir: dir}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	spec, stopTPM, err := startTPM("swtpm", dir)
	if err != nil {
		return nil, err
	}
	s.spec, s.stopTPM = spec, stopTPM
	stateDir := filepath.Join(dir, "state")
	capacity := 2 * max(n, 10000)
	s.stateDir, s.capacity = stateDir, capacity
	if err := seedScale(spec, stateDir, n, min(rps, n), capacity); err != nil {
		s.shut()
		return nil, err
	}
	tpm, err := inproc.OpenTPM(spec)
	if err != nil {
		s.shut()
		return nil, err
	}
	s.close = append(s.close, func() { tpm.Close() })
	if s.st, err = inproc.New(inproc.Config{TPM: tpm, Dir: stateDir, Presence: presence.Fixed{Allow: true}, Logger: log, MaxResidents: capacity}); err != nil {
		s.shut()
		return nil, err
	}
	s.close = append(s.close, func() { s.st.Close() })
	ch, stop, err := serveUnix(ctx, s.st, filepath.Join(dir, "ab.sock"), 60*time.Second, log)
	if err != nil {
		s.shut()
		return nil, err
	}
	s.close = append(s.close, stop)
	s.c = &scaleClient{ch: ch, cdh: sha256.New().Sum([]byte("ab"))[:32]}
	return s, nil
}

// round times one discovery and one makeCredential rk (deleted again,
// untimed) on this side.
func (s *abSide) round() error {
	t0 := time.Now()
	if _, err := s.c.discover(); err != nil {
		return err
	}
	s.disc = append(s.disc, time.Since(t0))
	s.user++
	t0 = time.Now()
	ad, err := s.c.ch.MakeCredential(ctaphidtest.MakeCredentialParams(targetRP, fmt.Appendf(nil, "ab-new-%d", s.user), s.c.cdh, true, false, nil))
	if err != nil {
		return err
	}
	s.mk = append(s.mk, time.Since(t0))
	return s.st.Store.DeleteResident(ad.CredID)
}

// start times one start of the daemon binary on this side's state, to
// the first INIT answered and to the first getInfo answered (the first
// answer that reads the state: its resident count), and reads its memory
// once it is idle.
func (s *abSide) start(bin string) error {
	sock := filepath.Join(s.dir, "d.sock")
	d, took, err := startDaemon(bin, s.spec, s.stateDir, sock, "--max-residents", strconv.Itoa(s.capacity))
	if err != nil {
		return err
	}
	defer d.stop()
	t1 := time.Now()
	if err := getInfo(sock); err != nil {
		return err
	}
	s.starts = append(s.starts, took)
	s.infos = append(s.infos, took+time.Since(t1))
	time.Sleep(200 * time.Millisecond)
	kb, err := vmRSS(d.cmd.Process.Pid)
	s.rssIdleKB = append(s.rssIdleKB, kb)
	return err
}

// getInfo asks the daemon at sock for its getInfo on a new channel.
func getInfo(sock string) error {
	c, err := net.Dial("unixpacket", sock)
	if err != nil {
		return err
	}
	defer c.Close()
	ch, err := (&ctaphidtest.Client{Conn: ctaphidtest.NetConn(c, 10*time.Second)}).OpenChannel()
	if err != nil {
		return err
	}
	st, _, err := ch.Call(0x04, nil)
	return okStatus("getInfo", st, err)
}

// measureAB compares the smallest and the largest count of each spread
// with the two stores open side by side and the operations alternated
// between them, so that the load of a shared machine weighs on both
// alike; the ratios of the goals come from these figures.
func measureAB(ctx context.Context, dir string, o options, daemonBin string, out io.Writer, log *slog.Logger) error {
	lo, hi := o.ScaleCounts[0], o.ScaleCounts[len(o.ScaleCounts)-1]
	for _, c := range o.ScaleCounts {
		lo, hi = min(lo, c), max(hi, c)
	}
	if lo == hi {
		return nil
	}
	fmt.Fprintf(out, "#### Interleaved: %d against %d credentials\n\n", hi, lo)
	fmt.Fprintf(out, "Both stores open at once (each on its own swtpm), one discovery and one makeCredential rk on each in turn, the order swapped every round, %d rounds after one warm-up round; then the daemon started %d times on each state in turn (to the first INIT answered, and to the first getInfo, which reads the state, on a new channel right after it); medians.\n\n", o.N, max(o.Starts, 2))
	fmt.Fprintf(out, "| spread | discovery at %d / %d | ratio | makeCredential rk | ratio | daemon start to ready | ratio | start to first getInfo | ratio | RSS idle after start | ratio |\n", lo, hi)
	fmt.Fprintln(out, "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
	for _, rps := range o.ScaleRPs {
		a, err := openABSide(ctx, filepath.Join(dir, fmt.Sprintf("ab-%d-%d", lo, rps)), lo, rps, log)
		if err != nil {
			return err
		}
		b, err := openABSide(ctx, filepath.Join(dir, fmt.Sprintf("ab-%d-%d", hi, rps)), hi, rps, log)
		if err != nil {
			a.shut()
			return err
		}
		err = func() error {
			for i := range o.N + 1 {
				first, second := a, b
				if i%2 == 1 {
					first, second = b, a
				}
				if err := first.round(); err != nil {
					return err
				}
				if err := second.round(); err != nil {
					return err
				}
			}
			a.stopStack()
			b.stopStack()
			if daemonBin == "" {
				return nil
			}
			for i := range max(o.Starts, 2) {
				first, second := a, b
				if i%2 == 1 {
					first, second = b, a
				}
				if err := first.start(daemonBin); err != nil {
					return err
				}
				if err := second.start(daemonBin); err != nil {
					return err
				}
			}
			return nil
		}()
		b.shut()
		a.shut()
		if err != nil {
			return fmt.Errorf("interleaved, %d RPs: %w", rps, err)
		}
		ma, mb := median(a.disc[1:]), median(b.disc[1:])
		ka, kb := median(a.mk[1:]), median(b.mk[1:])
		startCols := "— | — | — | — | — | —"
		if len(a.starts) > 0 {
			sa, sb := median(a.starts), median(b.starts)
			ia, ib := median(a.infos), median(b.infos)
			ra, rb := medianInt(a.rssIdleKB), medianInt(b.rssIdleKB)
			startCols = fmt.Sprintf("%s / %s | %.2f× | %s / %s | %.2f× | %d / %d kB | %.2f×", ms(sa), ms(sb), float64(sb)/float64(sa),
				ms(ia), ms(ib), float64(ib)/float64(ia), ra, rb, float64(rb)/float64(ra))
		}
		fmt.Fprintf(out, "| %d RP(s) | %s / %s | %.2f× | %s / %s | %.2f× | %s |\n", rps, ms(ma), ms(mb), float64(mb)/float64(ma), ms(ka), ms(kb), float64(kb)/float64(ka), startCols)
	}
	fmt.Fprintln(out)
	return nil
}
