// Command tpm-fido is a virtual FIDO2 security key whose credential keys
// live in the machine's TPM. `tpm-fido serve` (the default) runs the
// daemon; the other subcommands install, check and manage it.
package main

import (
	"fmt"
	"io"
	"os"

	"golang.org/x/sys/unix"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

type command struct {
	name  string
	short string
	run   func(args []string, stdout, stderr io.Writer) int
}

func commands() []command {
	return []command{
		{"serve", "run the authenticator daemon (default)", runServe},
		{"relay", "the system service that creates the FIDO device for users' daemons", runRelay},
		{"setup", "install udev rules, module loading, the relay service and the systemd user unit", runSetup},
		{"doctor", "check uhid, the relay, the TPM, the state directory and the prompt backend", runDoctor},
		{"list", "list resident credentials (SSH ones also as authorized_keys lines)", runList},
		{"delete", "delete a resident credential (its ID, or the start of it)", runDelete},
		{"pin", "set, change or show the PIN (set|change|status)", runPin},
		{"reset", "delete every credential and the PIN", runReset},
		{"version", "print the version", runVersion},
	}
}

func usage(w io.Writer) {
	fmt.Fprint(w, `usage: tpm-fido [COMMAND] [FLAGS]

A FIDO2 security key whose credential keys live in this machine's TPM.
With no command, tpm-fido runs serve.

commands:
`)
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.short)
	}
	fmt.Fprint(w, `
  -h, --help     this help; 'tpm-fido COMMAND -h' or 'tpm-fido help COMMAND'
                 for a command's flags
  --version      print the version

Exit status: 0 success, 1 the command failed, 2 a wrong command line.
See man tpm-fido.
`)
}

func main() {
	// The daemon holds secrets in memory (the credential-ID wrapping key,
	// PIN tokens): no core dump may contain them, and no other process of
	// the same user may ptrace it or read its memory through /proc.
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		fmt.Fprintf(os.Stderr, "tpm-fido: prctl(PR_SET_DUMPABLE, 0): %v\n", err)
	}
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	if len(args) > 0 {
		switch args[0] {
		case "-h", "-help", "--help":
			usage(stdout)
			return exitOK
		case "help":
			if len(args) > 1 {
				return run([]string{args[1], "-h"}, stdout, stderr)
			}
			usage(stdout)
			return exitOK
		case "-version", "--version":
			return runVersion(nil, stdout, stderr)
		}
	}
	name := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		name, args = args[0], args[1:]
	}
	for _, c := range commands() {
		if c.name == name {
			return c.run(args, stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "tpm-fido: unknown command %q\nRun 'tpm-fido --help' for the commands.\n", name)
	return exitUsage
}

func runVersion(args []string, stdout, stderr io.Writer) int {
	fl := newFlagSet("version", "version", "Print the version.")
	if code, ok := fl.parse(args, 0, 0, stdout, stderr); !ok {
		return code
	}
	fmt.Fprintln(stdout, "tpm-fido", version)
	return exitOK
}
