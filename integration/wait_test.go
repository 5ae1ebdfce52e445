package integration

import "time"

// pollUntil checks cond whenever changed fires, and every `every`, until it
// holds or d passes; it reports whether it held.
func pollUntil(d, every time.Duration, changed <-chan struct{}, cond func() bool) bool {
	deadline := time.NewTimer(d)
	defer deadline.Stop()
	tick := time.NewTicker(every)
	defer tick.Stop()
	for !cond() {
		select {
		case <-deadline.C:
			return cond()
		case <-changed:
		case <-tick.C:
		}
	}
	return true
}
