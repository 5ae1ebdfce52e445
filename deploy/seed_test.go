package deploy

import (
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// fakeDocker is a stand-in for the docker client: images are files in
// $FAKE_STATE, every call is logged to $FAKE_STATE/log, `pull` succeeds when
// FAKE_PULL=ok, and `build` records whether its context holds a root file
// system with a shell and the Dockerfile's entrypoint.
const fakeDocker = `#!/bin/sh
s=$FAKE_STATE
echo "$*" >> "$s/log"
case "$1" in
info) exit 0 ;;
image) [ -e "$s/img/$3" ] ;;
pull) [ "$FAKE_PULL" = ok ] || exit 1; touch "$s/img/$3" ;;
tag) touch "$s/img/$3" ;;
build)
  shift; f=""; ctx=""
  while [ $# -gt 0 ]; do
    case "$1" in
    -q) ;;
    -f) f=$2; shift ;;
    -t) touch "$s/img/$2"; shift ;;
    *) ctx=$1 ;;
    esac
    shift
  done
  ep=$(sed -n 's/^ENTRYPOINT \["\([^"]*\)".*/\1/p' "$f")
  [ -x "$ctx/root/bin/sh" ] && [ -x "$ctx/root$ep" ] && echo "context ok $ep" >> "$s/log"
  ;;
*) exit 2 ;;
esac
`

// TestSeedImages runs deploy/images/seed.sh against the stand-in docker:
// present images are left alone, missing ones are pulled where the pull
// answers, else built from a root file system with a shell and the
// server binary; SEED_TAG_SUFFIX, SEED_PULL=0 and --force do what they say.
func TestSeedImages(t *testing.T) {
	// With all of these present seed.sh never calls apt-get.
	for _, bin := range []string{"/usr/bin/redis-server", "/usr/bin/redis-cli", "/usr/sbin/haproxy", "/usr/sbin/nginx", "/bin/busybox", "/usr/bin/file"} {
		if _, err := os.Stat(bin); err != nil {
			t.Fatalf("%s missing: seed.sh builds from the host's packages (apt-get install redis-server redis-tools haproxy nginx-light busybox-static file)", bin)
		}
	}
	all := []string{"redis:7", "redis:7.0", "haproxy:2.6", "haproxy:lts", "nginx:1.22", "nginx:stable"}
	for _, tc := range []struct {
		name    string
		present []string
		env     []string
		args    []string
		want    []string // log lines, in order among themselves
		absent  []string // log line prefixes that must not appear
		images  []string // images present at the end
	}{
		{
			name: "present", present: all, env: []string{"FAKE_PULL=ok"},
			absent: []string{"pull", "build", "tag"}, images: all,
		},
		{
			name: "pulled", env: []string{"FAKE_PULL=ok"},
			want:   []string{"pull -q redis:7", "tag redis:7 redis:7.0", "pull -q haproxy:2.6", "tag haproxy:2.6 haproxy:lts", "pull -q nginx:1.22", "tag nginx:1.22 nginx:stable"},
			absent: []string{"build"}, images: all,
		},
		{
			name: "built", present: []string{"haproxy:2.6", "haproxy:lts"},
			want: []string{
				"pull -q redis:7", "context ok /usr/local/bin/docker-entrypoint.sh",
				"pull -q nginx:1.22", "context ok /usr/sbin/nginx",
			},
			absent: []string{"pull -q haproxy", "context ok /usr/sbin/haproxy"}, images: all,
		},
		{
			name: "suffix without pulls", env: []string{"FAKE_PULL=ok", "SEED_PULL=0", "SEED_TAG_SUFFIX=-t"},
			want:   []string{"context ok /usr/local/bin/docker-entrypoint.sh", "context ok /usr/sbin/haproxy", "context ok /usr/sbin/nginx"},
			absent: []string{"pull"},
			images: []string{"redis:7-t", "redis:7.0-t", "haproxy:2.6-t", "haproxy:lts-t", "nginx:1.22-t", "nginx:stable-t"},
		},
		{
			name: "force", present: all, args: []string{"--force"},
			want: []string{"context ok /usr/local/bin/docker-entrypoint.sh", "context ok /usr/sbin/haproxy", "context ok /usr/sbin/nginx"},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			state := t.TempDir()
			bin := filepath.Join(state, "bin")
			for _, d := range []string{bin, filepath.Join(state, "img")} {
				if err := os.Mkdir(d, 0o755); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(bin, "docker"), []byte(fakeDocker), 0o755); err != nil {
				t.Fatal(err)
			}
			for _, img := range tc.present {
				if err := os.WriteFile(filepath.Join(state, "img", img), nil, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			cmd := exec.Command("bash", append([]string{filepath.Join("images", "seed.sh")}, tc.args...)...)
			cmd.Env = append(os.Environ(), "PATH="+bin+":"+os.Getenv("PATH"), "FAKE_STATE="+state, "SEED_PULL_TIMEOUT=5")
			cmd.Env = append(cmd.Env, tc.env...)
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("seed.sh: %v\n%s", err, out)
			}
			logb, _ := os.ReadFile(filepath.Join(state, "log"))
			log := strings.Split(strings.TrimSpace(string(logb)), "\n")
			at := 0
			for _, w := range tc.want {
				i := slices.Index(log[at:], w)
				if i < 0 {
					t.Errorf("docker calls lack %q after call %d:\n%s\nseed.sh said:\n%s", w, at, logb, out)
					break
				}
				at += i + 1
			}
			for _, a := range tc.absent {
				for _, l := range log {
					if strings.HasPrefix(l, a) {
						t.Errorf("unexpected docker call %q", l)
					}
				}
			}
			for _, img := range tc.images {
				if _, err := os.Stat(filepath.Join(state, "img", img)); err != nil {
					t.Errorf("image %s missing at the end", img)
				}
			}
		})
	}
}
