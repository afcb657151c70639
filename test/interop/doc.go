// Package interop proves the authenticator against clients nobody on the
// project wrote: the system libfido2 (through cgo, over the daemon's
// SOCK_SEQPACKET report transport), the go-webauthn relying-party library
// and x/crypto/ssh's sk-ecdsa verifier. The non-test code is a thin Go
// wrapper over libfido2; the scenarios live in the _test.go files.
//
// The harness needs cgo and libfido2-dev (found with pkg-config). Where
// libfido2 is not installed, build with -tags nolibfido2 (or
// CGO_ENABLED=0): the package then holds only a test that skips.
package interop
