#!/usr/bin/env bash
# Entry point kept for the Makefile, .ci/run and habit: the images the tests
# and docker-compose.yml name (redis:7, haproxy:2.6, nginx:1.22) are pulled
# where a registry answers, else built locally. See deploy/images/seed.sh.
set -euo pipefail
exec bash "$(cd "$(dirname "$0")/.." && pwd)/deploy/images/seed.sh" "$@"
