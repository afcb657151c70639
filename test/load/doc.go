// Package load holds the load and soak test: concurrent clients on
// separate CTAPHID channels drive thousands of assertions and
// registrations through the real daemon binary over the unix: transport,
// checking that every request succeeds (after CHANNEL_BUSY retries), that
// resident memory stays flat, and, against the same packages in process,
// that no goroutine leaks. Its subpackage inproc holds the in-process
// stack that the benchmarks and security tests share; their client is
// ctap/ctaphid/ctaphidtest.
package load
