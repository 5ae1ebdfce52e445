# ssecluster: see README.md. `make test` is the whole suite, the same
# command .ci/run calls.

GO ?= go
export TESTCONTAINERS_RYUK_DISABLED ?= true

UNIT_PKGS := ./pubsub/... ./replay/... ./node/... ./cmd/... ./deploy/... ./bench/...
# An execution count, not a duration: Go 1.26's fuzz coordinator can fail a
# duration-bounded run with a bare "context deadline exceeded" at the end
# of -fuzztime when a worker is busy (golang/go#75804, fixed in Go 1.27);
# seen in the fresh CI on FuzzEncodeFrame. 100000 runs take 2-10 s here.
FUZZTIME ?= 100000x

.PHONY: build run test unit fuzz bench-smoke integration model seed bench microbench lint vet cluster cluster-down

build:
	$(GO) build -o bin/ ./cmd/...

# A node on :8080 with the embedded in-memory broker, admin on 127.0.0.1:9090.
run:
	$(GO) run ./cmd/ssenode

# Everything: vet and staticcheck, unit tests with -race, short fuzzing, benchmarks once as a
# smoke test, and the integration tests against real Redis in Docker.
test: lint unit fuzz bench-smoke integration

vet:
	$(GO) vet ./...

# The node's tests run twice: hijacked HTTP/1.1 streams (the default) and
# the net/http path that HTTP/2 streams use.
unit:
	$(GO) test -race -count=1 $(UNIT_PKGS)
	SSE_TEST_NETHTTP=1 $(GO) test -race -count=1 ./node/...
	$(GO) test -count=1 -run 'Allocs' ./node/... ./pubsub/... ./cmd/sseload/...   # allocation counts need a build without -race

fuzz:
	$(GO) test -run '^$$' -fuzz '^FuzzParseID$$' -fuzztime $(FUZZTIME) ./pubsub/
	$(GO) test -run '^$$' -fuzz '^FuzzParseLastEventID$$' -fuzztime $(FUZZTIME) ./replay/
	$(GO) test -run '^$$' -fuzz '^FuzzEncodeFrame$$' -fuzztime $(FUZZTIME) ./node/
	$(GO) test -run '^$$' -fuzz '^FuzzParseSubscribe$$' -fuzztime $(FUZZTIME) ./node/

bench-smoke:
	$(GO) test -run '^$$' -bench . -benchtime 1x ./pubsub/... ./replay/... ./node/...

# Needs a Docker engine. `seed` pulls redis:7, haproxy:2.6 and nginx:1.22
# where a registry answers and builds them from Debian packages where none
# does (deploy/images/seed.sh); set SSE_TEST_REDIS_ADDR to use a running
# Redis instead.
integration: seed
	$(GO) test -count=1 -timeout 20m ./integration/...

# The model-based checker of the replay window (integration/model_test.go)
# on more seeds than `make test` runs (its fixed ones, then random ones):
# `make model MODEL_SEEDS=500 MODEL_OPS=300`. A failing seed prints its
# schedule and the command that replays it.
MODEL_SEEDS ?= 200
MODEL_OPS ?= 150
model: seed
	$(GO) test -count=1 -timeout 12h -run 'TestModel' ./integration/ -model.seeds=$(MODEL_SEEDS) -model.ops=$(MODEL_OPS)

seed:
	@if [ -z "$$SSE_TEST_REDIS_ADDR" ]; then bash integration/seed-images.sh; fi

# Whole-system scenarios S1-S8 (Redis and nodes as local processes), report
# in bench/results/; BENCH_SCALE=small for a quick run. See bench/README.md.
bench:
	bash bench/run.sh

# Micro-benchmarks, several runs, for benchstat.
microbench:
	mkdir -p bin
	$(GO) test -run '^$$' -bench . -benchmem -count 6 ./pubsub/... ./replay/... ./node/... | tee bin/bench.txt

lint: vet
	$(GO) run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...

include deploy/deploy.mk

# Redis and three nodes as local processes (no containers).
cluster:
	bash deploy/local-cluster.sh up
cluster-down:
	bash deploy/local-cluster.sh down
