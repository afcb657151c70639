package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/fxamacker/cbor/v2"
	bolt "go.etcd.io/bbolt"

	"github.com/tpm-fido/tpm-fido/ctap"
	"github.com/tpm-fido/tpm-fido/ctap/ctaphid/ctaphidtest"
	"github.com/tpm-fido/tpm-fido/presence"
	"github.com/tpm-fido/tpm-fido/test/load/inproc"
	"github.com/tpm-fido/tpm-fido/tpmstore"
)

// scaleResult is one (credentials, RPs) configuration.
type scaleResult struct {
	N, RPs    int // resident credentials, RPs they are spread over
	PerRP     int // credentials of the RP the operations use
	Seed      time.Duration
	Ops       map[string][]time.Duration
	Cmds      map[string]float64 // TPM commands per operation
	List      []time.Duration    // tpm-fido list, whole run
	ListLines int
	Start     []time.Duration // daemon start to ready
	RSSIdleKB int
	RSSBusyKB int
	// The same, anonymous memory only (RssAnon: the process's own heap
	// and stacks, without the file pages of state.db that bbolt maps).
	AnonIdleKB  int
	AnonBusyKB  int
	BusyWhat    string
	StateBytes  int64
	StateInUse  int64 // pages holding data (bbolt's page stats of every bucket)
	capacityCfg int
	rpsFlag     int // the --scale-rps value it was measured under
}

// Operation names, in table order.
const (
	opDiscover = "discovery getAssertion (first answer)"
	opNext     = "getNextAssertion"
	opMakeRK   = "makeCredential rk"
	opMeta     = "credMgmt getCredsMetadata"
	opRPs      = "credMgmt enumerateRPs, per RP"
	opCreds    = "credMgmt enumerateCredentials, per credential"
)

var scaleOps = []string{opDiscover, opNext, opMakeRK, opMeta, opRPs, opCreds}

const scalePIN = "scale-pin-1"

// targetRP is the RP the operations use: the first, which holds
// ceil(N / RPs) credentials.
const targetRP = "rp0000.example"

func rpName(i int) string { return fmt.Sprintf("rp%04d.example", i) }

// runScale measures every configuration on one swtpm.
func runScale(ctx context.Context, o options, daemonBin string, out io.Writer, log *slog.Logger) error {
	dir, err := os.MkdirTemp("", "tpm-fido-scale-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	spec, stopTPM, err := startTPM("swtpm", dir)
	if err != nil {
		return err
	}
	defer stopTPM()
	var results []*scaleResult
	for _, rps := range o.ScaleRPs {
		for _, n := range o.ScaleCounts {
			r, err := measureScale(ctx, spec, filepath.Join(dir, fmt.Sprintf("n%d-r%d", n, rps)), n, rps, o, daemonBin, log)
			if err != nil {
				return fmt.Errorf("%d credentials over %d RPs: %w", n, rps, err)
			}
			results = append(results, r)
			log.Info("configuration measured", "n", n, "rps", rps)
		}
	}
	reportScale(out, o, results)
	return measureAB(ctx, dir, o, daemonBin, out, log)
}

func measureScale(ctx context.Context, spec, dir string, n, rps int, o options, daemonBin string, log *slog.Logger) (*scaleResult, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	stateDir := filepath.Join(dir, "state")
	capacity := max(tpmstore.DefaultMaxResidents, 2*n)
	r := &scaleResult{N: n, RPs: min(rps, n), Ops: map[string][]time.Duration{}, Cmds: map[string]float64{}, capacityCfg: capacity, rpsFlag: rps}
	r.PerRP = (n + r.RPs - 1) / r.RPs
	t0 := time.Now()
	if err := seedScale(spec, stateDir, n, r.RPs, capacity); err != nil {
		return nil, fmt.Errorf("seeding: %w", err)
	}
	r.Seed = time.Since(t0)
	log.Info("seeded", "n", n, "rps", r.RPs, "took", r.Seed)
	if err := measureScaleOps(ctx, spec, dir, stateDir, r, o, log); err != nil {
		return nil, err
	}
	if daemonBin != "" {
		if err := measureScaleCLI(daemonBin, spec, dir, stateDir, r, o); err != nil {
			return nil, err
		}
	}
	fi, err := os.Stat(tpmstore.StatePath(stateDir))
	if err != nil {
		return nil, err
	}
	r.StateBytes = fi.Size()
	db, err := bolt.Open(tpmstore.StatePath(stateDir), 0o600, &bolt.Options{ReadOnly: true, Timeout: 5 * time.Second})
	if err != nil {
		return nil, err
	}
	defer db.Close()
	err = db.View(func(tx *bolt.Tx) error {
		pages := 0
		err := tx.ForEach(func(_ []byte, b *bolt.Bucket) error {
			st := b.Stats()
			pages += st.BranchPageN + st.BranchOverflowN + st.LeafPageN + st.LeafOverflowN
			return nil
		})
		r.StateInUse = int64(pages) * int64(db.Info().PageSize)
		return err
	})
	return r, err
}

// seedScale fills a new state through the store's own API: every
// credential is a real one made by the TPM (CreateCredential), its
// record written with PutResidents in batches of 1,000. Credential j
// belongs to RP j mod rps; all are credProtect 1, so a discovery without
// UV sees every one.
func seedScale(spec, stateDir string, n, rps, capacity int) error {
	tpm, err := inproc.OpenTPM(spec)
	if err != nil {
		return err
	}
	defer tpm.Close()
	s, err := tpmstore.Open(tpmstore.Config{TPM: tpm, Dir: stateDir, MaxResidents: capacity})
	if err != nil {
		return err
	}
	defer s.Close()
	var batch []tpmstore.Resident
	for j := range n {
		rp := rpName(j % rps)
		h := sha256.Sum256([]byte(rp))
		c, err := s.CreateCredential(h, tpmstore.CredentialOptions{CredProtect: 1, Resident: true})
		if err != nil {
			return err
		}
		user := fmt.Sprintf("user-%05d", j)
		batch = append(batch, tpmstore.Resident{CredentialID: c.ID, RPID: rp, RPIDHash: h, RPName: "RP " + rp,
			User:      tpmstore.User{ID: []byte(user), Name: user + "@" + rp, DisplayName: "User " + user},
			PublicKey: c.PublicKey, CredProtect: 1})
		if len(batch) == 1000 || j == n-1 {
			if err := s.PutResidents(batch); err != nil {
				return err
			}
			batch = batch[:0]
		}
	}
	if got, _ := s.ResidentCount(); got != n {
		return fmt.Errorf("seeded %d, want %d", got, n)
	}
	return nil
}

// scaleClient is a CTAP client over the unix transport.
type scaleClient struct {
	ch  *ctaphidtest.Channel
	cdh []byte
}

func (c *scaleClient) cm(tok []byte, sub int, params map[int]any) (ctap.Status, []byte, error) {
	req := map[int]any{1: sub, 3: 2}
	msg := []byte{byte(sub)}
	if params != nil {
		raw, err := ctaphidtest.Encode(params)
		if err != nil {
			return 0, nil, err
		}
		req[2] = cbor.RawMessage(raw)
		msg = append(msg, raw...)
	}
	req[4] = ctaphidtest.Authenticate(2, tok, msg)
	return c.ch.Call(0x0A, req)
}

func okStatus(what string, st ctap.Status, err error) error {
	if err != nil {
		return fmt.Errorf("%s: %w", what, err)
	}
	if st != ctap.StatusOK {
		return fmt.Errorf("%s: %w", what, st)
	}
	return nil
}

// discover sends a discovery getAssertion (up=false) for the target RP
// and returns numberOfCredentials (1 when absent).
func (c *scaleClient) discover() (int, error) {
	st, body, err := c.ch.Call(ctaphidtest.CmdGetAssertion, ctaphidtest.GetAssertionParams(targetRP, c.cdh, false))
	if err := okStatus("getAssertion", st, err); err != nil {
		return 0, err
	}
	var r struct {
		N int `cbor:"5,keyasint"`
	}
	if err := cbor.Unmarshal(body, &r); err != nil {
		return 0, err
	}
	return max(r.N, 1), nil
}

// measureScaleOps runs the stack in this process on the seeded state and
// times each operation as a client over the unix socket.
func measureScaleOps(ctx context.Context, spec, dir, stateDir string, r *scaleResult, o options, log *slog.Logger) error {
	tpm, err := inproc.OpenTPM(spec)
	if err != nil {
		return err
	}
	defer tpm.Close()
	st, err := inproc.New(inproc.Config{TPM: tpm, Dir: stateDir, Presence: presence.Fixed{Allow: true}, Logger: log, MaxResidents: r.capacityCfg})
	if err != nil {
		return err
	}
	defer st.Close()
	ch, stop, err := serveUnix(ctx, st, filepath.Join(dir, "ops.sock"), 60*time.Second, log)
	if err != nil {
		return err
	}
	defer stop()
	c := &scaleClient{ch: ch, cdh: sha256.New().Sum([]byte("scale"))[:32]}
	ct := st.Counting
	// sample times f n times after one warm-up; f returns the time of
	// the part that counts (set-up and clean-up around it are not).
	sample := func(name string, f func() (time.Duration, error)) error {
		if _, err := f(); err != nil {
			return fmt.Errorf("%s (warm-up): %w", name, err)
		}
		cmds := 0
		for range o.N {
			ct.Reset()
			d, err := f()
			if err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
			cmds += ct.Total()
			r.Ops[name] = append(r.Ops[name], d)
		}
		r.Cmds[name] = float64(cmds) / float64(o.N)
		return nil
	}
	timed := func(f func() error) (time.Duration, error) {
		t0 := time.Now()
		err := f()
		return time.Since(t0), err
	}

	// Discovery: the first answer, numberOfCredentials checked.
	if err := sample(opDiscover, func() (time.Duration, error) {
		return timed(func() error {
			k, err := c.discover()
			if err == nil && k != r.PerRP {
				err = fmt.Errorf("numberOfCredentials %d, want %d", k, r.PerRP)
			}
			return err
		})
	}); err != nil {
		return err
	}

	// getNextAssertion: walks after an untimed getAssertion; only when
	// the RP has more than one credential.
	if r.PerRP > 1 {
		left := 0
		if err := sample(opNext, func() (time.Duration, error) {
			if left == 0 {
				k, err := c.discover()
				if err != nil {
					return 0, err
				}
				left = k - 1
			}
			left--
			return timed(func() error {
				st, _, err := ch.Call(0x08, nil)
				return okStatus("getNextAssertion", st, err)
			})
		}); err != nil {
			return err
		}
	}

	// makeCredential rk for a new user of the target RP; the credential
	// is deleted again afterwards (untimed), so the count stays N.
	k := 0
	if err := sample(opMakeRK, func() (time.Duration, error) {
		k++
		var ad *ctaphidtest.AuthData
		d, err := timed(func() error {
			var err error
			ad, err = ch.MakeCredential(ctaphidtest.MakeCredentialParams(targetRP, fmt.Appendf(nil, "bench-new-%d", k), c.cdh, true, false, nil))
			return err
		})
		if err != nil {
			return 0, err
		}
		return d, st.Store.DeleteResident(ad.CredID)
	}); err != nil {
		return err
	}
	if n, _ := st.Store.ResidentCount(); n != r.N {
		return fmt.Errorf("%d credentials after makeCredential, want %d", n, r.N)
	}

	// Credential management, with a PIN and a cm token.
	if err := ch.SetPIN(scalePIN); err != nil {
		return err
	}
	tok, err := ch.Token(scalePIN, 0x04, "")
	if err != nil {
		return err
	}
	if err := sample(opMeta, func() (time.Duration, error) {
		return timed(func() error {
			st, _, err := c.cm(tok, 1, nil)
			return okStatus("getCredsMetadata", st, err)
		})
	}); err != nil {
		return err
	}
	walk := func(name string, total int, begin func() (ctap.Status, []byte, error), nextSub int) error {
		left := 0
		return sample(name, func() (time.Duration, error) {
			if left == 0 {
				left = total
				return timed(func() error {
					st, _, err := begin()
					return okStatus(name+" begin", st, err)
				})
			}
			left--
			if left == 0 { // the last item of this walk was returned by the begin
				left = total
				return timed(func() error {
					st, _, err := begin()
					return okStatus(name+" begin", st, err)
				})
			}
			return timed(func() error {
				st, _, err := ch.Call(0x0A, map[int]any{1: nextSub})
				return okStatus(name+" next", st, err)
			})
		})
	}
	if err := walk(opRPs, r.RPs, func() (ctap.Status, []byte, error) { return c.cm(tok, 2, nil) }, 3); err != nil {
		return err
	}
	h := sha256.Sum256([]byte(targetRP))
	return walk(opCreds, r.PerRP, func() (ctap.Status, []byte, error) { return c.cm(tok, 4, map[int]any{1: h[:]}) }, 5)
}

// countingWriter counts lines.
type countingWriter struct{ lines int }

func (w *countingWriter) Write(p []byte) (int, error) {
	w.lines += bytes.Count(p, []byte{'\n'})
	return len(p), nil
}

// measureScaleCLI times `tpm-fido list` and the daemon's start-up and
// memory on the seeded state.
func measureScaleCLI(bin, spec, dir, stateDir string, r *scaleResult, o options) error {
	for range 3 {
		var w countingWriter
		var stderr bytes.Buffer
		cmd := exec.Command(bin, "list", "--tpm", spec, "--state-dir", stateDir)
		cmd.Stdout, cmd.Stderr = &w, &stderr
		t0 := time.Now()
		if err := cmd.Run(); err != nil {
			return fmt.Errorf("tpm-fido list: %w: %s", err, stderr.String())
		}
		r.List = append(r.List, time.Since(t0))
		r.ListLines = w.lines
	}
	// Every credential prints three lines, every RP one, plus the total.
	if want := 3*r.N + r.RPs + 1; r.ListLines != want {
		return fmt.Errorf("tpm-fido list printed %d lines, want %d", r.ListLines, want)
	}

	sock := filepath.Join(dir, "daemon.sock")
	var d *daemon
	for range max(o.Starts, 2) {
		if d != nil {
			d.stop()
		}
		var took time.Duration
		var err error
		if d, took, err = startDaemon(bin, spec, stateDir, sock, "--max-residents", strconv.Itoa(r.capacityCfg)); err != nil {
			return err
		}
		r.Start = append(r.Start, took)
	}
	defer d.stop()
	time.Sleep(time.Second)
	var err error
	if r.RSSIdleKB, err = vmRSS(d.cmd.Process.Pid); err != nil {
		return err
	}
	if r.AnonIdleKB, err = procStatusKB(d.cmd.Process.Pid, "RssAnon:"); err != nil {
		return err
	}
	// Busy: discoveries and a whole enumerateCredentials of the target
	// RP (every one of its records read), then the memory again.
	ch, err := ctaphidtest.DialChannel(sock, 60*time.Second)
	if err != nil {
		return err
	}
	defer ch.Close()
	c := &scaleClient{ch: ch, cdh: sha256.New().Sum([]byte("busy"))[:32]}
	for range 200 {
		if _, err := c.discover(); err != nil {
			return err
		}
	}
	tok, err := ch.Token(scalePIN, 0x04, "")
	if err != nil {
		return err
	}
	h := sha256.Sum256([]byte(targetRP))
	st, _, err := c.cm(tok, 4, map[int]any{1: h[:]})
	if err := okStatus("enumerateCredentialsBegin", st, err); err != nil {
		return err
	}
	for i := 1; i < r.PerRP; i++ {
		st, _, err := ch.Call(0x0A, map[int]any{1: 5})
		if err := okStatus("enumerateCredentialsGetNextCredential", st, err); err != nil {
			return err
		}
	}
	r.BusyWhat = fmt.Sprintf("after 200 discoveries and an enumeration of %d credentials", r.PerRP)
	time.Sleep(time.Second)
	if r.RSSBusyKB, err = vmRSS(d.cmd.Process.Pid); err != nil {
		return err
	}
	r.AnonBusyKB, err = procStatusKB(d.cmd.Process.Pid, "RssAnon:")
	return err
}

// procStatusKB reads a kB field of /proc/PID/status.
func procStatusKB(pid int, field string) (int, error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, err
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, field); ok {
			return strconv.Atoi(strings.TrimSuffix(strings.TrimSpace(v), " kB"))
		}
	}
	return 0, fmt.Errorf("no %s line", field)
}

// reportScale prints the tables and the goal ratios.
func reportScale(w io.Writer, o options, rs []*scaleResult) {
	fmt.Fprintf(w, "Median of %d timed calls per operation (after one warm-up), swtpm, client over the `unix:` transport; TPM commands per operation in brackets.\n\n", o.N)
	byRPs := map[int][]*scaleResult{}
	for _, r := range rs {
		byRPs[r.rpsFlag] = append(byRPs[r.rpsFlag], r)
	}
	for _, l := range o.ScaleRPs {
		rows := byRPs[l]
		fmt.Fprintf(w, "#### Spread over %d RP(s)\n\n", l)
		fmt.Fprint(w, "| | ")
		for _, r := range rows {
			fmt.Fprintf(w, "%d | ", r.N)
		}
		fmt.Fprintln(w)
		fmt.Fprint(w, "|---|")
		for range rows {
			fmt.Fprint(w, "---:|")
		}
		fmt.Fprintln(w)
		line := func(name string, f func(r *scaleResult) string) {
			fmt.Fprintf(w, "| %s | ", name)
			for _, r := range rows {
				fmt.Fprintf(w, "%s | ", f(r))
			}
			fmt.Fprintln(w)
		}
		line("RPs / credentials of the RP used", func(r *scaleResult) string { return fmt.Sprintf("%d / %d", r.RPs, r.PerRP) })
		for _, op := range scaleOps {
			line(op, func(r *scaleResult) string {
				d := r.Ops[op]
				if len(d) == 0 {
					return "—"
				}
				return fmt.Sprintf("%s [%s]", ms(median(d)), num(r.Cmds[op]))
			})
		}
		line("`tpm-fido list` (whole run; per credential)", func(r *scaleResult) string {
			if len(r.List) == 0 {
				return "—"
			}
			m := median(r.List)
			return fmt.Sprintf("%s; %.1f µs", ms(m), float64(m)/1e3/float64(r.N))
		})
		line("daemon start to ready (median)", func(r *scaleResult) string {
			if len(r.Start) == 0 {
				return "—"
			}
			return ms(median(r.Start))
		})
		line("RSS idle after start", func(r *scaleResult) string { return kb(r.RSSIdleKB) })
		line("RSS after 200 discoveries + enumerating the RP", func(r *scaleResult) string { return kb(r.RSSBusyKB) })
		line("of which anonymous (RssAnon), idle / after", func(r *scaleResult) string {
			return fmt.Sprintf("%s / %s", kb(r.AnonIdleKB), kb(r.AnonBusyKB))
		})
		line("state.db: file size / pages holding data", func(r *scaleResult) string {
			return fmt.Sprintf("%s / %s", size(r.StateBytes), size(r.StateInUse))
		})
		line("seeding (CreateCredential + PutResidents)", func(r *scaleResult) string { return r.Seed.Round(time.Millisecond).String() })
		fmt.Fprintln(w)
		if len(rows) >= 2 {
			lo, hi := rows[0], rows[len(rows)-1]
			fmt.Fprintf(w, "Goals, %d against %d credentials (within 2×):\n\n", hi.N, lo.N)
			goal := func(name string, a, b float64) {
				v := "yes"
				if a > 2*b {
					v = "**no**"
				}
				fmt.Fprintf(w, "- %s: %.2f× — %s\n", name, a/b, v)
			}
			goal(opDiscover, float64(median(hi.Ops[opDiscover])), float64(median(lo.Ops[opDiscover])))
			goal(opMakeRK, float64(median(hi.Ops[opMakeRK])), float64(median(lo.Ops[opMakeRK])))
			if len(hi.Start) > 0 && len(lo.Start) > 0 {
				goal("daemon start to ready", float64(median(hi.Start)), float64(median(lo.Start)))
				goal("RSS idle after start", float64(hi.RSSIdleKB), float64(lo.RSSIdleKB))
				goal("RSS after the busy phase", float64(hi.RSSBusyKB), float64(lo.RSSBusyKB))
				goal("anonymous RSS after the busy phase", float64(hi.AnonBusyKB), float64(lo.AnonBusyKB))
			}
			fmt.Fprintln(w)
		}
	}
}

func size(b int64) string {
	if b < 1e6 {
		return fmt.Sprintf("%.0f kB", float64(b)/1e3)
	}
	return fmt.Sprintf("%.1f MB", float64(b)/1e6)
}

func kb(v int) string {
	if v == 0 {
		return "—"
	}
	return fmt.Sprintf("%d kB", v)
}

// parseInts parses "10,100,1000".
func parseInts(s string) ([]int, error) {
	var out []int
	for _, f := range strings.Split(s, ",") {
		v, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || v < 1 {
			return nil, errors.New("want positive integers separated by commas")
		}
		out = append(out, v)
	}
	return out, nil
}
