// Command tpm-fido-bench measures the authenticator: TPM commands and
// latency per CTAP operation through the unix: transport, the ratio of an
// assertion to a bare TPM2_Sign on the same TPM, and the real daemon's
// start-up time, resident memory and idle wake-ups. It runs against swtpm
// (which it starts itself) and/or the in-process TPM simulator.
//
// Usage:
//
//	tpm-fido-bench [--tpm swtpm|simulator|both] [-n 200] [--markdown]
//	               [--daemon PATH] [--load 2000] [--idle 10s]
//	tpm-fido-bench --scale [--scale-counts 10,100,1000,10000]
//	               [--scale-rps 1,1000] [-n 100] [--daemon PATH]
//
// --scale measures the resident-credential operations (discovery,
// getNextAssertion, makeCredential rk, credential management, tpm-fido
// list, daemon start-up, memory, state size) at each count of resident
// credentials spread over each number of RPs, on swtpm.
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"
)

type options struct {
	TPM      string
	N        int
	Markdown bool
	Daemon   string
	Load     int
	Idle     time.Duration
	Starts   int
	// IdleWindows is the number of consecutive idle windows after the load.
	IdleWindows int
	// Scale: measure resident-credential costs at these counts, spread
	// over these numbers of RPs, instead of the per-operation figures.
	Scale       bool
	ScaleCounts []int
	ScaleRPs    []int
}

func main() {
	var o options
	fl := flag.NewFlagSet("tpm-fido-bench", flag.ContinueOnError)
	fl.StringVar(&o.TPM, "tpm", "both", "TPM to measure: swtpm, simulator or both")
	fl.IntVar(&o.N, "n", 200, "iterations per operation")
	fl.BoolVar(&o.Markdown, "markdown", false, "print markdown tables")
	fl.StringVar(&o.Daemon, "daemon", "", "tpm-fido binary for the start-up, memory and idle figures (empty: build ./cmd/tpm-fido; \"none\": skip)")
	fl.IntVar(&o.Load, "load", 2000, "requests sent to the daemon between the idle and loaded memory readings")
	fl.DurationVar(&o.Idle, "idle", 10*time.Second, "idle window for counting wake-ups")
	fl.IntVar(&o.Starts, "starts", 5, "daemon starts timed")
	fl.IntVar(&o.IdleWindows, "idle-windows", 1, "consecutive idle windows measured after the load")
	fl.BoolVar(&o.Scale, "scale", false, "measure resident-credential costs at --scale-counts credentials spread over --scale-rps RPs (swtpm)")
	counts := fl.String("scale-counts", "10,100,1000,10000", "resident credential counts for --scale")
	rps := fl.String("scale-rps", "1,1000", "numbers of RPs the credentials are spread over, for --scale")
	verbose := fl.Bool("v", false, "log progress to stderr")
	if err := fl.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	var err error
	if o.ScaleCounts, err = parseInts(*counts); err != nil {
		fmt.Fprintln(os.Stderr, "tpm-fido-bench: --scale-counts:", err)
		os.Exit(2)
	}
	if o.ScaleRPs, err = parseInts(*rps); err != nil {
		fmt.Fprintln(os.Stderr, "tpm-fido-bench: --scale-rps:", err)
		os.Exit(2)
	}
	var logw io.Writer = io.Discard
	if *verbose {
		logw = os.Stderr
	}
	log := slog.New(slog.NewTextHandler(logw, &slog.HandlerOptions{Level: slog.LevelInfo}))
	if err := run(context.Background(), o, os.Stdout, log); err != nil {
		fmt.Fprintln(os.Stderr, "tpm-fido-bench:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, o options, out io.Writer, log *slog.Logger) error {
	var backends []string
	switch o.TPM {
	case "swtpm", "simulator":
		backends = []string{o.TPM}
	case "both":
		backends = []string{"swtpm", "simulator"}
	default:
		return fmt.Errorf("--tpm %q: want swtpm, simulator or both", o.TPM)
	}
	if o.N < 2 {
		return fmt.Errorf("-n must be at least 2")
	}
	daemon, cleanup, err := findDaemon(o.Daemon, log)
	if err != nil {
		return err
	}
	defer cleanup()
	if o.Scale {
		return runScale(ctx, o, daemon, out, log)
	}
	rep := &report{markdown: o.Markdown, w: out, n: o.N}
	rep.header()
	for _, b := range backends {
		res, err := measureBackend(ctx, b, o, daemon, log)
		if err != nil {
			return fmt.Errorf("%s: %w", b, err)
		}
		rep.backend(res)
	}
	return nil
}
