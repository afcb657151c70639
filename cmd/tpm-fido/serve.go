package main

import (
	"fmt"
	"io"
)

// runServe runs the daemon. (Owned by the transport work.)
func runServe(args []string, stdout, stderr io.Writer) int {
	fmt.Fprintln(stderr, "tpm-fido: serve is not built yet")
	return 1
}
