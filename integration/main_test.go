package integration

import (
	"testing"

	"go.uber.org/goleak"
)

// TestMain fails the package if a test leaves a goroutine behind: a node
// handler, a broker reader, a client. go-redis' dial probe, started after a
// failed dial (Redis stopped), sleeps a second before it notices that its
// pool was closed: not ours to stop.
func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m,
		goleak.IgnoreAnyFunction("github.com/redis/go-redis/v9/internal/pool.(*ConnPool).tryDial"),
	)
}
