// Package deploy holds no code: it is the home of ssecluster's deployment
// files (Dockerfile, HAProxy and nginx configurations, Kubernetes manifests,
// Prometheus alerts, Grafana dashboard) and of the tests that keep them
// honest.
//
// The tests parse every file and check it against the project's contract:
// environment variable and metric names, the admin probes, shutdown timing,
// load-balancer timeouts against the SSE heartbeat, local-only images. When
// haproxy and nginx are installed they also run `haproxy -c` and `nginx -t`
// on the configurations; CI installs both, so their absence is a failure.
//
// See README.md in this directory for what each file is for.
package deploy
