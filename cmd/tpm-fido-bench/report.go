package main

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/google/go-tpm/tpm2"
)

var ccNames = map[tpm2.TPMCC]string{
	0x131: "CreatePrimary", 0x153: "Create", 0x191: "CreateLoaded", 0x157: "Load",
	0x15D: "Sign", 0x165: "FlushContext", 0x155: "HMAC", 0x15E: "Unseal",
	0x173: "ReadPublic", 0x17B: "GetRandom", 0x176: "StartAuthSession",
	0x162: "ContextSave", 0x161: "ContextLoad", 0x17A: "GetCapability",
	0x154: "ECDH_ZGen", 0x16B: "PolicyAuthValue", 0x16F: "PolicyGetDigest",
	0x139: "DictionaryAttackLockReset", 0x13A: "DictionaryAttackParameters",
	0x134: "NV_Increment", 0x14E: "NV_Read", 0x12A: "NV_DefineSpace", 0x122: "NV_UndefineSpace",
	0x120: "EvictControl", 0x151: "PolicySecret", 0x150: "ObjectChangeAuth",
}

func ccName(cc tpm2.TPMCC) string {
	if n, ok := ccNames[cc]; ok {
		return n
	}
	return fmt.Sprintf("0x%03x", uint32(cc))
}

type report struct {
	markdown bool
	w        io.Writer
	n        int
}

func (r *report) header() {
	if r.markdown {
		fmt.Fprintf(r.w, "Iterations per operation: %d (after one warm-up call). Latency is measured by a client over the `unix:` transport (SOCK_SEQPACKET, 64-byte CTAPHID reports), presence answered by a fixed yes.\n\n", r.n)
		return
	}
	fmt.Fprintf(r.w, "iterations per operation: %d (after one warm-up)\n", r.n)
}

// perOp formats the TPM commands of one operation, averaged.
func perOp(o opResult) (total string, by string) {
	n := float64(len(o.Durs))
	sum := 0
	var parts []string
	for _, cc := range slices.Sorted(maps.Keys(o.Cmds)) {
		sum += o.Cmds[cc]
		parts = append(parts, fmt.Sprintf("%s %s", num(float64(o.Cmds[cc])/n), ccName(cc)))
	}
	if len(parts) == 0 {
		parts = []string{"none"}
	}
	return num(float64(sum) / n), strings.Join(parts, ", ")
}

func num(f float64) string {
	if f == float64(int(f)) {
		return fmt.Sprintf("%d", int(f))
	}
	return fmt.Sprintf("%.2f", f)
}

func ms(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d)/1e6) }

func (r *report) backend(b *backendResult) {
	ops := append(slices.Clone(b.Ops), b.BareSign)
	warm := median(b.Ops[1].Durs)
	ratio := float64(warm) / float64(median(b.BareSign.Durs))
	verdict := "yes"
	if ratio > 1.5 {
		verdict = "no"
	}
	if r.markdown {
		fmt.Fprintf(r.w, "### TPM: %s\n\n", b.Name)
		fmt.Fprintln(r.w, "| operation | TPM commands / op | by command | median | p99 |")
		fmt.Fprintln(r.w, "|---|---:|---|---:|---:|")
		for _, o := range ops {
			t, by := perOp(o)
			fmt.Fprintf(r.w, "| %s | %s | %s | %s | %s |\n", o.Name, t, by, ms(median(o.Durs)), ms(p99(o.Durs)))
		}
		fmt.Fprintf(r.w, "\ngetAssertion warm / bare TPM2_Sign (medians): **%.2f×** — within 1.5×: **%s**\n\n", ratio, verdict)
	} else {
		fmt.Fprintf(r.w, "\n== TPM: %s ==\n", b.Name)
		tw := tabwriter.NewWriter(r.w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "operation\tTPM cmds/op\tby command\tmedian\tp99")
		for _, o := range ops {
			t, by := perOp(o)
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", o.Name, t, by, ms(median(o.Durs)), ms(p99(o.Durs)))
		}
		tw.Flush()
		fmt.Fprintf(r.w, "getAssertion warm / bare TPM2_Sign (medians): %.2fx (within 1.5x: %s)\n", ratio, verdict)
	}
	if b.Daemon != nil {
		r.daemon(b.Daemon)
	}
}

func (r *report) daemon(d *daemonResult) {
	again := fmt.Sprintf("start to device ready, existing state (median of %d restarts)", len(d.Restarts))
	if d.FreshState {
		again = fmt.Sprintf("start to device ready, new state again (median of %d more starts; the simulator is a new TPM each start)", len(d.Restarts))
	}
	rows := [][2]string{
		{"start to device ready, new state (first start)", ms(d.FirstStart)},
		{again, ms(median(d.Restarts))},
		{"resident memory (VmRSS), idle after start", fmt.Sprintf("%d kB", d.RSSIdleKB)},
		{fmt.Sprintf("resident memory after %d requests (%s)", d.LoadN, d.LoadTime.Round(time.Millisecond)), fmt.Sprintf("%d kB (%+d kB)", d.RSSLoadKB, d.RSSLoadKB-d.RSSIdleKB)},
	}
	rows = append(rows, [2]string{fmt.Sprintf("context switches during those %d requests (the counter works)", d.LoadN),
		fmt.Sprintf("%d (%.1f per request)", d.LoadSwitches, float64(d.LoadSwitches)/float64(max(d.LoadN, 1)))})
	windows := []struct {
		name string
		v    idleSample
	}{{"idle after start", d.IdleBefore}}
	for i, w := range d.IdleAfter {
		name := "idle after the load"
		if len(d.IdleAfter) > 1 {
			name = fmt.Sprintf("idle after the load, window %d", i+1)
		}
		windows = append(windows, struct {
			name string
			v    idleSample
		}{name, w})
	}
	for _, s := range windows {
		rows = append(rows, [2]string{
			fmt.Sprintf("context switches, %s (%s, %d threads)", s.name, s.v.Window, s.v.Threads),
			fmt.Sprintf("%d (%.2f/s; busiest threads %s), CPU %d ticks", s.v.CtxSwitch, float64(s.v.CtxSwitch)/s.v.Window.Seconds(), busiest(s.v.PerThreads), s.v.CPUTicks),
		})
	}
	if r.markdown {
		fmt.Fprintln(r.w, "| daemon (`tpm-fido serve --transport unix:…`) | value |")
		fmt.Fprintln(r.w, "|---|---|")
		for _, row := range rows {
			fmt.Fprintf(r.w, "| %s | %s |\n", row[0], row[1])
		}
		fmt.Fprintln(r.w)
		return
	}
	tw := tabwriter.NewWriter(r.w, 0, 4, 2, ' ', 0)
	for _, row := range rows {
		fmt.Fprintf(tw, "%s\t%s\n", row[0], row[1])
	}
	tw.Flush()
}

// busiest lists up to three threads by switch count.
func busiest(m map[string]int) string {
	ids := slices.Collect(maps.Keys(m))
	slices.SortFunc(ids, func(a, b string) int { return m[b] - m[a] })
	var parts []string
	for _, id := range ids[:min(3, len(ids))] {
		parts = append(parts, fmt.Sprintf("%d", m[id]))
	}
	if len(parts) == 0 {
		return "none"
	}
	return strings.Join(parts, "/")
}
