// Command tpm-fido is a virtual FIDO2 security key whose credential keys
// live in the machine's TPM. `tpm-fido serve` (the default) runs the
// daemon; the other subcommands install, check and manage it.
package main

import (
	"fmt"
	"io"
	"os"
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
		{"setup", "install udev rules, module loading and the systemd user unit", runSetup},
		{"doctor", "check uhid, the TPM, the state directory and the prompt backend", runDoctor},
		{"list", "list resident credentials (SSH ones also as authorized_keys lines)", runList},
		{"delete", "delete a resident credential", runDelete},
		{"pin", "set, change or show the PIN (set|change|status)", runPin},
		{"reset", "delete every credential and the PIN", runReset},
		{"version", "print the version", runVersion},
	}
}

func usage(w io.Writer) {
	fmt.Fprintln(w, "usage: tpm-fido [command] [flags]")
	fmt.Fprintln(w, "\ncommands:")
	for _, c := range commands() {
		fmt.Fprintf(w, "  %-8s %s\n", c.name, c.short)
	}
	fmt.Fprintln(w, "\nRun 'tpm-fido COMMAND -h' for a command's flags.")
}

func main() {
	os.Exit(run(os.Args[1:], os.Stdout, os.Stderr))
}

func run(args []string, stdout, stderr io.Writer) int {
	name := "serve"
	if len(args) > 0 && len(args[0]) > 0 && args[0][0] != '-' {
		name, args = args[0], args[1:]
	}
	if name == "help" {
		usage(stdout)
		return 0
	}
	for _, c := range commands() {
		if c.name == name {
			return c.run(args, stdout, stderr)
		}
	}
	fmt.Fprintf(stderr, "tpm-fido: unknown command %q\n", name)
	usage(stderr)
	return 2
}

func runVersion(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stdout, "tpm-fido", version)
	return 0
}
