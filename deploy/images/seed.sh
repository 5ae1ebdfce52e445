#!/usr/bin/env bash
# seed.sh: make sure the third-party images that the tests and
# docker-compose.yml name exist in the local Docker engine:
#
#   redis:7   (+ redis:7.0)     redis-server and redis-cli
#   haproxy:2.6 (+ haproxy:lts) haproxy -W -db -f /usr/local/etc/haproxy/haproxy.cfg
#   nginx:1.22 (+ nginx:stable) nginx -g 'daemon off;'
#
# For each image: present -> nothing to do; else `docker pull` where a
# registry answers (bounded by SEED_PULL_TIMEOUT); else build it here,
# FROM scratch, out of this machine's Debian packages (installed with apt-get
# when missing): the server binary, the shared libraries it links, and a
# static busybox for /bin/sh (health checks and testcontainers' port probe
# run a shell). The built images behave like the official ones where the
# tests and compose rely on it: redis takes leading flags (`redis:7 --save ""`)
# and runs with protected mode off; haproxy and nginx read their
# configuration from the same paths and stop on the same signals.
#
# A Dockerfile FROM scratch is used rather than `docker import --change`,
# which Docker 20.10 refuses for STOPSIGNAL.
#
# Usage: deploy/images/seed.sh [--force]
#   --force              build (or pull) again even when the tags exist
# Environment:
#   SEED_TAG_SUFFIX      appended to every tag (redis:7-x ...), to try the
#                        script without touching the tags others are using
#   SEED_PULL_TIMEOUT    seconds allowed for each docker pull (default 30)
#   SEED_PULL=0          never pull; always build locally
set -euo pipefail

force=0
case "${1:-}" in
  --force) force=1 ;;
  "") ;;
  *) echo "usage: $0 [--force]" >&2; exit 2 ;;
esac
suffix=${SEED_TAG_SUFFIX:-}
pull_timeout=${SEED_PULL_TIMEOUT:-30}

log() { echo "seed.sh: $*" >&2; }

command -v docker >/dev/null || { log "no docker client on PATH"; exit 1; }
docker info >/dev/null 2>&1 || { log "no Docker engine answers (docker info failed)"; exit 1; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

have() { docker image inspect "$1" >/dev/null 2>&1; }

# ensure_packages PKG:PATH...: apt-get install each package whose file is
# missing (busybox must be the static build: the image has no libc of its own
# for it).
ensure_packages() {
  local missing=() spec pkg path
  for spec in "$@"; do
    pkg=${spec%%:*} path=${spec#*:}
    if [ "$pkg" = busybox-static ]; then
      file -L "$path" 2>/dev/null | grep -q 'statically linked' || missing+=("$pkg")
    else
      [ -x "$path" ] || missing+=("$pkg")
    fi
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    log "missing ${missing[*]}: install them (apt-get install ${missing[*]}) or run as root"
    return 1
  fi
  log "installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # Keep the packages' own services from starting on the host.
  local policy=/usr/sbin/policy-rc.d created=0
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy" && chmod +x "$policy" && created=1
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends file "${missing[@]}" >/dev/null
  [ $created = 1 ] && rm -f "$policy"
  return 0
}

# copy_bin ROOT BINARY...: the binaries and every shared library they link,
# at the same paths.
copy_bin() {
  local root=$1 f lib; shift
  for f in "$@"; do
    install -D -m 0755 "$f" "$root$f"
    for lib in $(ldd "$f" | grep -o '/[^ ]*' | sort -u); do
      [ -e "$root$lib" ] || install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"
    done
  done
}

# base_root ROOT: busybox as /bin/sh and a few applets, users and groups,
# and glibc's name-service modules (DNS inside compose networks).
base_root() {
  local root=$1 applet lib
  mkdir -p "$root"/{bin,etc,tmp,data,run,var/log,var/run}
  chmod 1777 "$root/tmp"
  install -m 0755 /bin/busybox "$root/bin/busybox"
  for applet in sh awk cat grep nc ls ps sleep echo env wget; do
    ln -sf busybox "$root/bin/$applet"
  done
  cat > "$root/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
www-data:x:33:33:www-data:/var/www:/bin/false
redis:x:999:999:redis:/data:/bin/false
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
  printf 'root:x:0:\nwww-data:x:33:\nredis:x:999:\nnogroup:x:65534:\n' > "$root/etc/group"
  printf 'hosts: files dns\n' > "$root/etc/nsswitch.conf"
  for lib in /lib/x86_64-linux-gnu/libnss_dns.so.2 /lib/x86_64-linux-gnu/libnss_files.so.2 /lib/x86_64-linux-gnu/libresolv.so.2; do
    if [ -e "$lib" ]; then install -D -m 0755 "$(readlink -f "$lib")" "$root$lib"; fi
  done
}

layout_redis() {
  local root=$1
  ensure_packages redis-server:/usr/bin/redis-server redis-tools:/usr/bin/redis-cli busybox-static:/bin/busybox
  base_root "$root"
  copy_bin "$root" /usr/bin/redis-server /usr/bin/redis-cli
  mkdir -p "$root/usr/local/bin"
  ln -sf /usr/bin/redis-server "$root/usr/local/bin/redis-server"
  ln -sf /usr/bin/redis-cli "$root/usr/local/bin/redis-cli"
  cat > "$root/usr/local/bin/docker-entrypoint.sh" <<'EOF'
#!/bin/sh
# As in the official image: leading flags go to redis-server, and without a
# configuration file protected mode is off so other containers may connect.
if [ "$#" -eq 0 ] || [ "${1#-}" != "$1" ]; then set -- redis-server "$@"; fi
if [ "$1" = redis-server ]; then
  shift
  case "${1:-}" in
    *.conf) exec /usr/bin/redis-server "$@" ;;
    *) exec /usr/bin/redis-server --protected-mode no "$@" ;;
  esac
fi
exec "$@"
EOF
  chmod 0755 "$root/usr/local/bin/docker-entrypoint.sh"
  cat > "$work/redis.Dockerfile" <<'EOF'
FROM scratch
COPY root/ /
ENV PATH=/usr/local/bin:/usr/bin:/bin
WORKDIR /data
EXPOSE 6379
ENTRYPOINT ["/usr/local/bin/docker-entrypoint.sh"]
CMD ["redis-server"]
EOF
}

layout_haproxy() {
  local root=$1
  ensure_packages haproxy:/usr/sbin/haproxy busybox-static:/bin/busybox
  base_root "$root"
  copy_bin "$root" /usr/sbin/haproxy
  mkdir -p "$root/usr/local/etc/haproxy" "$root/var/lib/haproxy"
  cat > "$root/usr/local/etc/haproxy/haproxy.cfg" <<'EOF'
# Placeholder: mount a configuration here, as with the official image.
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
frontend placeholder
  bind :8080
  http-request return status 200 content-type text/plain string "haproxy placeholder\n"
EOF
  # SIGUSR1 is HAProxy's soft stop, as in the official image.
  cat > "$work/haproxy.Dockerfile" <<'EOF'
FROM scratch
COPY root/ /
ENV PATH=/usr/sbin:/usr/bin:/bin
STOPSIGNAL SIGUSR1
ENTRYPOINT ["/usr/sbin/haproxy"]
CMD ["-W", "-db", "-f", "/usr/local/etc/haproxy/haproxy.cfg"]
EOF
}

layout_nginx() {
  local root=$1
  ensure_packages nginx-light:/usr/sbin/nginx busybox-static:/bin/busybox
  base_root "$root"
  copy_bin "$root" /usr/sbin/nginx
  mkdir -p "$root/etc/nginx/conf.d" "$root/var/log/nginx" "$root/var/lib/nginx/body" \
    "$root/var/lib/nginx/proxy" "$root/var/cache/nginx" "$root/usr/share/nginx/html"
  if [ -e /etc/nginx/mime.types ]; then cp /etc/nginx/mime.types "$root/etc/nginx/mime.types"; else : > "$root/etc/nginx/mime.types"; fi
  cat > "$root/etc/nginx/nginx.conf" <<'EOF'
user www-data;
worker_processes auto;
pid /run/nginx.pid;
error_log /dev/stderr warn;
events { worker_connections 1024; }
http {
  include /etc/nginx/mime.types;
  access_log off;
  include /etc/nginx/conf.d/*.conf;
}
EOF
  echo 'server { listen 80; location / { return 200 "nginx placeholder\n"; } }' > "$root/etc/nginx/conf.d/default.conf"
  # SIGQUIT is nginx's graceful stop, as in the official image.
  cat > "$work/nginx.Dockerfile" <<'EOF'
FROM scratch
COPY root/ /
ENV PATH=/usr/sbin:/usr/bin:/bin
EXPOSE 80
STOPSIGNAL SIGQUIT
ENTRYPOINT ["/usr/sbin/nginx"]
CMD ["-g", "daemon off;"]
EOF
}

# seed NAME TAG...: the first tag is the one pulled; the others are aliases.
seed() {
  local name=$1; shift
  local tags=() t missing=0
  for t in "$@"; do tags+=("$t$suffix"); done
  for t in "${tags[@]}"; do have "$t" || missing=1; done
  if [ $force = 0 ] && [ $missing = 0 ]; then
    log "${tags[*]}: present"
    return 0
  fi
  if [ "${SEED_PULL:-1}" != 0 ] && timeout "$pull_timeout" docker pull -q "$1" >/dev/null 2>&1; then
    log "$1: pulled"
    for t in "${tags[@]}"; do
      [ "$t" = "$1" ] || docker tag "$1" "$t"
    done
    return 0
  fi
  log "${tags[*]}: no registry answered; building from this machine's Debian packages"
  "layout_$name" "$work/$name/root"
  local args=()
  for t in "${tags[@]}"; do args+=(-t "$t"); done
  # The legacy builder warns that it is deprecated on stderr; show its
  # output only when the build fails.
  if ! docker build -q -f "$work/$name.Dockerfile" "${args[@]}" "$work/$name" >"$work/build.log" 2>&1; then
    cat "$work/build.log" >&2
    log "${tags[*]}: docker build failed"
    return 1
  fi
  rm -rf "${work:?}/$name"
  for t in "${tags[@]}"; do have "$t" || { log "$t: build finished but the tag is missing"; return 1; }; done
  log "${tags[*]}: built"
}

seed redis redis:7 redis:7.0
seed haproxy haproxy:2.6 haproxy:lts
seed nginx nginx:1.22 nginx:stable
