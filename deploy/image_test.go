package deploy

import (
	"os/exec"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
)

func TestDockerfile(t *testing.T) {
	var instrs [][2]string // instruction, arguments
	for _, line := range strings.Split(strings.ReplaceAll(string(readFile(t, "Dockerfile")), "\\\n", " "), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		op, args, _ := strings.Cut(line, " ")
		instrs = append(instrs, [2]string{strings.ToUpper(op), strings.TrimSpace(args)})
	}
	last := map[string]string{}
	var copied []string
	for _, in := range instrs {
		last[in[0]] = in[1]
		switch in[0] {
		case "COPY", "ADD":
			f := strings.Fields(in[1])
			copied = append(copied, f[:len(f)-1]...)
		case "HEALTHCHECK", "RUN":
			t.Errorf("%s in a FROM-scratch image: there is no shell", in[0])
		}
	}
	if instrs[0] != [2]string{"FROM", "scratch"} {
		t.Errorf("first instruction %v, want FROM scratch (no registry to pull a base from)", instrs[0])
	}
	if got := last["USER"]; got != "65532:65532" && got != "65532" {
		t.Errorf("USER %q, want 65532 (nonroot)", got)
	}
	if got := last["ENTRYPOINT"]; got != `["/ssenode"]` {
		t.Errorf("ENTRYPOINT %s, want [\"/ssenode\"]", got)
	}
	if got := strings.Fields(last["EXPOSE"]); !slices.Contains(got, "8080") || !slices.Contains(got, "9090") {
		t.Errorf("EXPOSE %v, want 8080 and 9090", got)
	}
	env := map[string]string{}
	for _, in := range instrs {
		if in[0] == "ENV" {
			for _, kv := range strings.Fields(in[1]) {
				k, v, _ := strings.Cut(kv, "=")
				env[k] = v
			}
		}
	}
	if env["SSE_ADMIN_LISTEN"] != ":9090" {
		t.Errorf("ENV SSE_ADMIN_LISTEN=%q, want :9090", env["SSE_ADMIN_LISTEN"])
	}
	checkEnv(t, "Dockerfile", env)

	// deploy.mk stages exactly these files as the build context.
	sort.Strings(copied)
	if want := []string{"ca-certificates.crt", "group", "passwd", "ssenode"}; !slices.Equal(copied, want) {
		t.Errorf("COPY sources %v, want %v (what deploy.mk stages)", copied, want)
	}
	if !regexp.MustCompile(`(?m)^nonroot:x:65532:65532:`).Match(readFile(t, "image/passwd")) {
		t.Error("image/passwd has no nonroot user with uid/gid 65532")
	}
	if !regexp.MustCompile(`(?m)^nonroot:x:65532:`).Match(readFile(t, "image/group")) {
		t.Error("image/group has no nonroot group 65532")
	}
}

// makeDryRun runs make -n on deploy.mk from the repository root.
func makeDryRun(t *testing.T, args ...string) string {
	t.Helper()
	if _, err := exec.LookPath("make"); err != nil {
		t.Fatal("make is not on PATH: install it (apt-get install make)")
	}
	cmd := exec.Command("make", append([]string{"-n", "-f", "deploy/deploy.mk"}, args...)...)
	cmd.Dir = ".."
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("make -n %v: %v\n%s", args, err, out)
	}
	return string(out)
}

func TestDeployMk(t *testing.T) {
	out := makeDryRun(t, "image", "GO=go", "DOCKER=docker")
	for _, want := range []string{
		"CGO_ENABLED=0", "go build -trimpath -ldflags='-s -w'", "bin/ssenode-linux-amd64 ./cmd/ssenode",
		"deploy/Dockerfile", "-t ssecluster/ssenode:dev -t ssecluster/ssenode:latest",
		"ca-certificates.crt",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("make image does not run %q:\n%s", want, out)
		}
	}
	for _, target := range []string{"up", "down", "logs"} {
		out := makeDryRun(t, target, "COMPOSE=docker-compose")
		if !strings.Contains(out, "docker-compose -f ") || !strings.Contains(out, "docker-compose.yml") {
			t.Errorf("make %s does not run docker-compose on docker-compose.yml:\n%s", target, out)
		}
	}

	// Compose tool detection, with stand-ins for docker: `docker compose`
	// when it answers, else docker-compose.
	for _, tc := range []struct{ docker, want string }{
		{"true", "true compose -f "},
		{"false", "docker-compose -f "},
	} {
		if out := makeDryRun(t, "logs", "DOCKER="+tc.docker); !strings.Contains(out, tc.want) {
			t.Errorf("DOCKER=%s: make logs runs\n%s\nwant %q", tc.docker, out, tc.want)
		}
	}
}
