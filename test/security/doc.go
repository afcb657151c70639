// Package security holds the authenticator's security properties as tests
// that fail when a property breaks: credentials bound to their relying
// party and their machine, user presence only with a "yes", channel
// isolation, PIN lockout, file modes, secret-free logs and bounded
// messages. The tests drive the full stack (CTAPHID server, CTAP2, key
// store on the TPM simulator) over an in-memory report pipe.
package security
