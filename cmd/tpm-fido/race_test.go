//go:build race

package main

// raceEnabled: the race detector slows the commands several times; the
// fault-injection test then runs its short set.
const raceEnabled = true
