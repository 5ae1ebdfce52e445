//go:build race

package node

// raceEnabled: the race detector drops sync.Pool items at random, so
// allocation counts of pooled paths mean nothing in this build.
const raceEnabled = true
