# Container targets for ssecluster. The root Makefile includes this file;
# it also works alone from the repository root:
#   make -f deploy/deploy.mk image up
#
#   image   build bin/ssenode-linux-amd64 on the host, then the FROM-scratch
#           image $(IMAGE):$(IMAGE_TAG) (and :latest) from deploy/Dockerfile
#   up      start docker-compose.yml (Redis, three nodes, HAProxy) detached
#           and wait until HAProxy has a ready node
#   down    stop the cluster and remove its containers and volumes
#   logs    follow the cluster's logs
#
# No registry is needed: third-party images (redis:7, haproxy:2.6,
# nginx:1.22) come from integration/seed-images.sh, ssenode from `image`.
# Set COMPOSE_PROFILES=nginx to also start nginx on port 8081.

DEPLOY_DIR := $(patsubst %/,%,$(dir $(lastword $(MAKEFILE_LIST))))
DEPLOY_ROOT := $(patsubst %/,%,$(dir $(abspath $(DEPLOY_DIR))))

GO ?= go
DOCKER ?= docker
IMAGE ?= ssecluster/ssenode
IMAGE_TAG ?= dev
IMAGE_VERSION ?= $(shell git -C $(DEPLOY_ROOT) describe --tags --always --dirty 2>/dev/null || echo dev)
IMAGE_BIN := $(DEPLOY_ROOT)/bin/ssenode-linux-amd64
IMAGE_CTX := $(DEPLOY_ROOT)/bin/image-context
CA_BUNDLE ?= /etc/ssl/certs/ca-certificates.crt

# `docker compose` (v2 plugin) when it answers, else docker-compose (v1).
# Evaluated once, on first use, so including this file costs nothing.
COMPOSE ?= $(eval COMPOSE := $(shell $(DOCKER) compose version >/dev/null 2>&1 && echo '$(DOCKER) compose' || echo docker-compose))$(COMPOSE)
COMPOSE_PROJECT ?=
COMPOSE_ARGS = -f $(DEPLOY_ROOT)/docker-compose.yml $(if $(COMPOSE_PROJECT),-p $(COMPOSE_PROJECT))
# Where `up` asks HAProxy whether a node is ready (its monitor-uri).
LB_HEALTH_URL ?= http://127.0.0.1:$(or $(SSECLUSTER_STATS_PORT),$(SSE_LB_STATS_PORT),8404)/healthz
UP_TIMEOUT ?= 60

.PHONY: image image-bin up down logs

# Always rebuilt: go build is incremental, and make cannot see Go's inputs.
image-bin:
	cd $(DEPLOY_ROOT) && CGO_ENABLED=0 GOOS=linux GOARCH=amd64 \
		$(GO) build -trimpath -ldflags='-s -w' -o $(IMAGE_BIN) ./cmd/ssenode

image: image-bin
	@if [ ! -s $(CA_BUNDLE) ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			echo "deploy.mk: $(CA_BUNDLE) missing; installing ca-certificates"; \
			DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ca-certificates >/dev/null; \
		else \
			echo "deploy.mk: $(CA_BUNDLE) missing: install ca-certificates (apt-get install ca-certificates) or set CA_BUNDLE" >&2; \
			exit 1; \
		fi; \
	fi
	rm -rf $(IMAGE_CTX) && mkdir -p $(IMAGE_CTX)
	cp $(IMAGE_BIN) $(IMAGE_CTX)/ssenode
	cp $(CA_BUNDLE) $(IMAGE_CTX)/ca-certificates.crt
	cp $(DEPLOY_DIR)/image/passwd $(DEPLOY_DIR)/image/group $(IMAGE_CTX)/
	$(DOCKER) build -f $(DEPLOY_DIR)/Dockerfile --build-arg VERSION=$(IMAGE_VERSION) \
		-t $(IMAGE):$(IMAGE_TAG) -t $(IMAGE):latest $(IMAGE_CTX)
	rm -rf $(IMAGE_CTX)

up:
	@$(DOCKER) image inspect $(IMAGE):$(IMAGE_TAG) >/dev/null 2>&1 || \
		{ echo "deploy.mk: no image $(IMAGE):$(IMAGE_TAG): run 'make image' first" >&2; exit 1; }
	$(COMPOSE) $(COMPOSE_ARGS) up -d
	@echo "waiting up to $(UP_TIMEOUT)s for $(LB_HEALTH_URL)"; \
	i=0; until curl -fsS -o /dev/null $(LB_HEALTH_URL) 2>/dev/null; do \
		i=$$((i+1)); \
		if [ $$i -ge $(UP_TIMEOUT) ]; then \
			echo "deploy.mk: no ready node behind HAProxy after $(UP_TIMEOUT)s; see 'make logs'" >&2; exit 1; \
		fi; \
		sleep 1; \
	done; echo "cluster up: curl -N 'http://127.0.0.1:$(or $(SSE_LB_PORT),8080)/events?topic=demo'"

down:
	$(COMPOSE) $(COMPOSE_ARGS) --profile nginx down --volumes --remove-orphans

logs:
	$(COMPOSE) $(COMPOSE_ARGS) logs -f --tail=100
