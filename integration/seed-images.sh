#!/usr/bin/env bash
# Builds the third-party images the tests and docker-compose.yml name
# (redis:7, haproxy:2.6, nginx:1.22) on a Docker engine with no registry.
#
# It first tries ../shared/ci/seed-images as is. That script imports root
# file systems with `docker import --change STOPSIGNAL ...`, which Docker
# 20.10 (Debian 12's docker.io) refuses ("stopsignal is not a valid change
# command"). When that happens we ask it only for the root file systems
# (--rootfs-only) and build each image FROM scratch with a Dockerfile, which
# every engine version supports and which needs no pull.
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
shared=${SSE_SHARED_DIR:-$here/../../shared}
seed=$shared/ci/seed-images
log() { echo "seed-images.sh: $*" >&2; }

have_all() {
  local t
  for t in redis:7 redis:7.0 haproxy:2.6 haproxy:lts nginx:1.22 nginx:stable; do
    docker image inspect "$t" >/dev/null 2>&1 || return 1
  done
}

if have_all && [ "${1:-}" != "--force" ]; then
  log "all images present"
  exit 0
fi

if [ -x "$seed" ] || [ -f "$seed" ]; then
  if bash "$seed" "$@"; then have_all && exit 0; fi
  log "shared seed-images failed; building from its root file systems instead"
else
  log "no $seed; cannot lay out root file systems" && exit 1
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
bash "$seed" --rootfs-only "$work"

build() { # build NAME "TAGS" DOCKERFILE-LINES...
  local name=$1 tags=$2; shift 2
  local dir=$work/$name
  {
    echo "FROM scratch"
    echo "COPY root/ /"
    printf '%s\n' "$@"
  } > "$work/$name.Dockerfile"
  mkdir -p "$dir.ctx" && mv "$dir" "$dir.ctx/root"
  local args=() t
  for t in $tags; do args+=(-t "$t"); done
  log "building $tags"
  docker build -q -f "$work/$name.Dockerfile" "${args[@]}" "$dir.ctx" >/dev/null
}

build redis "redis:7 redis:7.0" \
  'ENV PATH=/usr/local/bin:/usr/bin:/bin' 'WORKDIR /data' 'EXPOSE 6379' \
  'ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]' 'CMD ["redis-server"]'
build haproxy "haproxy:2.6 haproxy:lts" \
  'ENV PATH=/usr/sbin:/usr/bin:/bin' 'STOPSIGNAL SIGUSR1' \
  'ENTRYPOINT ["/usr/sbin/haproxy"]' 'CMD ["-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]'
build nginx "nginx:1.22 nginx:stable" \
  'ENV PATH=/usr/sbin:/usr/bin:/bin' 'EXPOSE 80' 'STOPSIGNAL SIGQUIT' \
  'ENTRYPOINT ["/usr/sbin/nginx"]' 'CMD ["-g", "daemon off;"]'
have_all
log "images ready"
