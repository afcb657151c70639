package main

import (
	"fmt"
	"io"
)

func runDoctor(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "tpm-fido: doctor is not built yet")
	return 1
}
