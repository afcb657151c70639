package main

import (
	"fmt"
	"io"
)

func notYet(name string, stderr io.Writer) int {
	fmt.Fprintf(stderr, "tpm-fido: %s is not built yet\n", name)
	return 1
}

func runDoctor(args []string, stdout, stderr io.Writer) int { return notYet("doctor", stderr) }
func runList(args []string, stdout, stderr io.Writer) int   { return notYet("list", stderr) }
func runDelete(args []string, stdout, stderr io.Writer) int { return notYet("delete", stderr) }
func runPin(args []string, stdout, stderr io.Writer) int    { return notYet("pin", stderr) }
func runReset(args []string, stdout, stderr io.Writer) int  { return notYet("reset", stderr) }
