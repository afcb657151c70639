package tpmtest

import (
	"encoding/binary"
	"sync"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
)

// CountingTPM wraps a TPM transport and counts the commands sent through
// it by command code (read from the 10-byte command header). It is safe
// for concurrent use. Benchmarks and tests use it to check the TPM
// command budget of each store operation.
type CountingTPM struct {
	tpm transport.TPM

	mu     sync.Mutex
	counts map[tpm2.TPMCC]int
}

// NewCountingTPM returns a CountingTPM sending to tpm.
func NewCountingTPM(tpm transport.TPM) *CountingTPM {
	return &CountingTPM{tpm: tpm, counts: make(map[tpm2.TPMCC]int)}
}

// Send counts the command and passes it on.
func (c *CountingTPM) Send(input []byte) ([]byte, error) {
	cc := tpm2.TPMCC(0)
	if len(input) >= 10 {
		cc = tpm2.TPMCC(binary.BigEndian.Uint32(input[6:10]))
	}
	c.mu.Lock()
	c.counts[cc]++
	c.mu.Unlock()
	return c.tpm.Send(input)
}

// Snapshot returns a copy of the counts so far.
func (c *CountingTPM) Snapshot() map[tpm2.TPMCC]int {
	c.mu.Lock()
	defer c.mu.Unlock()
	m := make(map[tpm2.TPMCC]int, len(c.counts))
	for k, v := range c.counts {
		m[k] = v
	}
	return m
}

// Total returns the number of commands sent so far.
func (c *CountingTPM) Total() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	n := 0
	for _, v := range c.counts {
		n += v
	}
	return n
}

// Count returns how many commands with code cc were sent so far.
func (c *CountingTPM) Count(cc tpm2.TPMCC) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.counts[cc]
}

// Reset sets all counts to zero.
func (c *CountingTPM) Reset() {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.counts)
}

// Restore sets the counts back to m, a Snapshot, forgetting the commands
// sent since: for work a measurement should not count.
func (c *CountingTPM) Restore(m map[tpm2.TPMCC]int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	clear(c.counts)
	for k, v := range m {
		c.counts[k] = v
	}
}
