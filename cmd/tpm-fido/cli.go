package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"strings"
	"time"
)

// Exit statuses: 0 success (help included), 1 the command failed, 2 the
// command line is wrong.
const (
	exitOK    = 0
	exitFail  = 1
	exitUsage = 2
)

// flagSet is a command's flags with the text of its help. Parse errors
// are printed once, by parse, never by the flag package.
type flagSet struct {
	*flag.FlagSet
	cmd      string // "list", "pin set"
	synopsis string // what follows "usage: tpm-fido "
	about    string // one paragraph
}

func newFlagSet(cmd, synopsis, about string) *flagSet {
	fl := flag.NewFlagSet(cmd, flag.ContinueOnError)
	fl.SetOutput(io.Discard)
	fl.Usage = func() {}
	return &flagSet{FlagSet: fl, cmd: cmd, synopsis: synopsis, about: about}
}

// printUsage writes the command's help: synopsis, about, flags.
func (f *flagSet) printUsage(w io.Writer) {
	fmt.Fprintf(w, "usage: tpm-fido %s\n\n%s\n", f.synopsis, f.about)
	first := true
	f.VisitAll(func(fl *flag.Flag) {
		if first {
			fmt.Fprintln(w, "\nflags:")
			first = false
		}
		arg, usage := flag.UnquoteUsage(fl)
		line := "  --" + fl.Name
		if arg != "" {
			line += " " + arg
		}
		if def := fl.DefValue; def != "" && def != "false" && def != "0s" {
			usage += " (default " + def + ")"
		}
		fmt.Fprintf(w, "%s\n      %s\n", line, usage)
	})
}

// parse parses args, allowing between minArgs and maxArgs positional
// arguments (maxArgs < 0: any number). When ok is false the command
// returns code: exitOK after -h/--help (the help went to stdout), or
// exitUsage after a usage error (the reason went to stderr, once).
func (f *flagSet) parse(args []string, minArgs, maxArgs int, stdout, stderr io.Writer) (code int, ok bool) {
	err := f.Parse(args)
	switch {
	case errors.Is(err, flag.ErrHelp):
		f.printUsage(stdout)
		return exitOK, false
	case err != nil:
		return f.usageError(stderr, "%v", err), false
	case f.NArg() < minArgs:
		return f.usageError(stderr, "too few arguments"), false
	case maxArgs >= 0 && f.NArg() > maxArgs:
		return f.usageError(stderr, "unexpected argument: %s", strings.Join(f.Args()[maxArgs:], " ")), false
	}
	return exitOK, true
}

// usageError prints the reason and where the help is; it returns
// exitUsage.
func (f *flagSet) usageError(stderr io.Writer, format string, args ...any) int {
	fmt.Fprintf(stderr, "tpm-fido %s: %s\nRun 'tpm-fido %s -h' for help.\n", f.cmd, fmt.Sprintf(format, args...), f.cmd)
	return exitUsage
}

// durationFlag is a time.Duration flag whose error says what it wants: a
// bare number ("5") is the commonest mistake.
type durationFlag struct{ d *time.Duration }

func (v durationFlag) String() string {
	if v.d == nil {
		return ""
	}
	return v.d.String()
}

func (v durationFlag) Set(s string) error {
	d, err := time.ParseDuration(s)
	if err != nil {
		return errors.New("want a duration with a unit, such as 30s or 2m")
	}
	*v.d = d
	return nil
}

// durationVar defines a duration flag with a helpful parse error.
func (f *flagSet) durationVar(p *time.Duration, name string, value time.Duration, usage string) {
	*p = value
	f.Var(durationFlag{p}, name, usage)
}
