// Package e2e is the end-to-end test: it boots a VM with the real kernel
// uhid driver, a swtpm-backed TPM, the real tpm-fido daemon, libfido2's
// tools and OpenSSH, and reports each guest scenario as a subtest of
// TestVM. The builder lives in test/e2e/vm; the demo in test/e2e/cmd/demo.
package e2e
