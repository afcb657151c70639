// Command browsers-guest runs inside the browser end-to-end guest as the
// desktop user: it starts the session (Xvfb, D-Bus, a notification
// server), the relying party and, per browser, a fresh tpm-fido daemon and
// the browser, runs the WebAuthn flows and prints one E2E-RESULT line per
// flow on the console for the host test (test/e2e, TestBrowsers).
package main

import (
	"os"

	"github.com/tpm-fido/tpm-fido/test/e2e/browser"
)

func main() {
	config := "/e2e/config.json"
	if len(os.Args) > 1 {
		config = os.Args[1]
	}
	os.Exit(browser.Main(config, os.Stdout))
}
