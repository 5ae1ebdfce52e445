// Package integration holds the tests that need real infrastructure: Redis
// started with testcontainers (or SSE_TEST_REDIS_ADDR), several nodes in
// one process, node kills, Redis restarts and stalls, a compose cluster
// behind a load balancer driven by a real browser, and repository-wide
// checks such as every package having a doc comment.
package integration
