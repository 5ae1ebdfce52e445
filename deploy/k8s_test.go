package deploy

import (
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"
)

func TestKubernetes(t *testing.T) {
	files, err := filepath.Glob("k8s/*.yaml")
	if err != nil {
		t.Fatal(err)
	}
	byKind := map[string]map[string]any{}
	var resources []string
	for _, f := range files {
		for _, doc := range yamlDocs(t, f) {
			kind := str(doc, "kind")
			if kind == "Kustomization" {
				for _, r := range list(doc, "resources") {
					resources = append(resources, filepath.Join("k8s", fmt.Sprint(r)))
				}
				continue
			}
			if str(doc, "apiVersion") == "" || str(doc, "metadata", "name") == "" {
				t.Errorf("%s: %s without apiVersion or metadata.name", f, kind)
			}
			if byKind[kind] != nil {
				t.Errorf("%s: a second %s", f, kind)
			}
			byKind[kind] = doc
		}
	}
	sort.Strings(resources)
	if want := slices.DeleteFunc(slices.Clone(files), func(f string) bool { return strings.HasSuffix(f, "kustomization.yaml") }); !slices.Equal(resources, want) {
		t.Errorf("kustomization resources %v, want every manifest %v", resources, want)
	}
	for _, kind := range []string{"ConfigMap", "Deployment", "Service", "PodDisruptionBudget", "HorizontalPodAutoscaler"} {
		if byKind[kind] == nil {
			t.Fatalf("no %s in k8s/", kind)
		}
	}
	cm, dep, svc, pdb, hpa := byKind["ConfigMap"], byKind["Deployment"], byKind["Service"], byKind["PodDisruptionBudget"], byKind["HorizontalPodAutoscaler"]

	env := stringMap(dict(cm, "data"))
	checkEnv(t, "ConfigMap", env)
	if env["SSE_ADMIN_LISTEN"] == "" {
		t.Error("ConfigMap: SSE_ADMIN_LISTEN unset: the default is loopback, which probes cannot reach")
	}

	spec := dict(dep, "spec", "template", "spec")
	if n, _ := get(dep, "spec", "replicas").(int); n != 3 {
		t.Errorf("Deployment replicas %v, want 3", get(dep, "spec", "replicas"))
	}
	labels := dict(dep, "spec", "template", "metadata", "labels")
	for what, sel := range map[string]map[string]any{
		"Deployment selector": dict(dep, "spec", "selector", "matchLabels"),
		"Service selector":    dict(svc, "spec", "selector"),
		"PDB selector":        dict(pdb, "spec", "selector", "matchLabels"),
	} {
		if len(sel) == 0 {
			t.Errorf("%s is empty", what)
		}
		for k, v := range sel {
			if labels[k] != v {
				t.Errorf("%s %s=%v does not match the pod labels %v", what, k, v, labels)
			}
		}
	}
	if got := get(pdb, "spec", "maxUnavailable"); got != 1 {
		t.Errorf("PDB maxUnavailable %v, want 1", got)
	}
	if str(svc, "spec", "sessionAffinity") == "ClientIP" {
		t.Error("Service sessionAffinity ClientIP: nodes are stateless, clients resume anywhere")
	}

	containers := list(spec, "containers")
	if len(containers) != 1 {
		t.Fatalf("%d containers, want 1", len(containers))
	}
	c := containers[0]
	if img := str(c, "image"); !strings.HasPrefix(img, "ssecluster/ssenode:") {
		t.Errorf("container image %q, want ssecluster/ssenode", img)
	}
	if str(c, "envFrom", 0, "configMapRef", "name") != str(cm, "metadata", "name") {
		t.Error("container envFrom does not name the ConfigMap")
	}
	for _, e := range list(c, "env") {
		if name := str(e, "name"); strings.HasPrefix(name, "SSE_") && envVars[name] == nil {
			t.Errorf("container env: unknown variable %s", name)
		}
	}
	ports := map[string]int{}
	for _, p := range list(c, "ports") {
		ports[str(p, "name")], _ = get(p, "containerPort").(int)
	}
	for key, name := range map[string]string{"SSE_LISTEN": "http", "SSE_ADMIN_LISTEN": "admin"} {
		_, p, _ := strings.Cut(env[key], ":")
		if strconv.Itoa(ports[name]) != p {
			t.Errorf("containerPort %q is %d, %s is %q", name, ports[name], key, env[key])
		}
	}
	for probe, path := range map[string]string{"readinessProbe": "/readyz", "livenessProbe": "/healthz"} {
		if got := str(c, probe, "httpGet", "path"); got != path {
			t.Errorf("%s path %q, want %s", probe, got, path)
		}
		if port := get(c, probe, "httpGet", "port"); port != "admin" && port != ports["admin"] {
			t.Errorf("%s port %v, want the admin port", probe, port)
		}
	}
	if tp := str(svc, "spec", "ports", 0, "targetPort"); tp != "http" || len(list(svc, "spec", "ports")) != 1 {
		t.Errorf("Service ports %v: want only the SSE port (targetPort http); admin serves POST /publish and pprof", list(svc, "spec", "ports"))
	}

	// No binary but /ssenode exists in the image: exec hooks cannot run.
	if cmd := words(get(c, "lifecycle", "preStop", "exec", "command")); len(cmd) > 0 && cmd[0] != "/ssenode" {
		t.Errorf("preStop exec %v: the scratch image has no shell or sleep (use lifecycle.preStop.sleep)", cmd)
	}
	preStop := 0
	if v := get(c, "lifecycle", "preStop", "sleep", "seconds"); v != nil {
		preStop, _ = v.(int)
	}
	grace, ok := get(spec, "terminationGracePeriodSeconds").(int)
	shutdown := envDuration(t, env, "SSE_SHUTDOWN_TIMEOUT", defaultShutdownTimeout)
	const margin = 5 * time.Second
	if need := time.Duration(preStop)*time.Second + shutdown + margin; !ok || time.Duration(grace)*time.Second < need {
		t.Errorf("terminationGracePeriodSeconds %v, want at least preStop sleep (%ds) + SSE_SHUTDOWN_TIMEOUT (%v) + %v = %v",
			get(spec, "terminationGracePeriodSeconds"), preStop, shutdown, margin, need)
	}

	if str(hpa, "apiVersion") != "autoscaling/v2" {
		t.Errorf("HPA apiVersion %q, want autoscaling/v2", str(hpa, "apiVersion"))
	}
	if str(hpa, "spec", "scaleTargetRef", "kind") != "Deployment" || str(hpa, "spec", "scaleTargetRef", "name") != str(dep, "metadata", "name") {
		t.Error("HPA does not target the Deployment")
	}
	if m := str(hpa, "spec", "metrics", 0, "pods", "metric", "name"); sseMetrics[m] != gauge || m == "" {
		t.Errorf("HPA Pods metric %q is not an sse_ gauge", m)
	}
	if minR, _ := get(hpa, "spec", "minReplicas").(int); minR < 3 {
		t.Errorf("HPA minReplicas %d, want at least the Deployment's 3", minR)
	}
}
