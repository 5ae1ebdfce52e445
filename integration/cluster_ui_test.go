package integration

import (
	"context"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/ssecluster/ssecluster/integration/redistest"
)

// clusterPageRow is one node row of /cluster/ui as the browser renders it.
type clusterPageRow struct {
	Node  string   `json:"node"`
	Cells []string `json:"cells"`
}

// TestClusterUI opens the admin listener's /cluster/ui in headless
// Chromium: it lists both nodes with their streams and readiness, and
// refreshes itself: a SIGKILLed node leaves the page without a reload.
func TestClusterUI(t *testing.T) {
	if _, err := os.Stat(e2eChromiumPath); err != nil {
		t.Fatalf("chromium is not installed at %s (apt-get install chromium): %v", e2eChromiumPath, err)
	}
	srv := redistest.Start(t)
	prefix := redistest.Prefix(t)
	// No rebalancing: ui2 keeps the 3 streams the page must show.
	n1 := startProcNode(t, srv.URL(), prefix, "ui1", "SSE_REBALANCE=false")
	n2 := startProcNode(t, srv.URL(), prefix, "ui2", "SSE_REBALANCE=false")
	for range 3 {
		startClient(t, always(n2.addr()), clientOpts{discard: true}, "ui")
	}
	waitStreams(t, n2, 3)

	b := e2eStartBrowser(t)
	if err := b.navigate(30*time.Second, n1.adminURL()+"/cluster/ui"); err != nil {
		t.Fatalf("open /cluster/ui: %v", err)
	}
	rows := func() []clusterPageRow {
		ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
		defer cancel()
		r, err := chromedp.Run(ctx, chromedp.Evaluate[[]clusterPageRow](
			`[...document.querySelectorAll("#nodes tr")].map(tr => ({node: tr.dataset.node, cells: [...tr.cells].map(td => td.textContent)}))`))
		if err != nil {
			t.Fatalf("read the page: %v", err)
		}
		return r
	}
	waitRows := func(what string, d time.Duration, ok func([]clusterPageRow) bool) []clusterPageRow {
		t.Helper()
		deadline := time.Now().Add(d)
		for {
			r := rows()
			if ok(r) {
				return r
			}
			if time.Now().After(deadline) {
				t.Fatalf("page: %s not seen after %v; rows %+v", what, d, r)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
	// Columns: node, address, version, up, streams, share, moving, topics,
	// deliveries/s, state.
	r := waitRows("both nodes, ui2 with its 3 streams", 10*time.Second, func(r []clusterPageRow) bool {
		return len(r) == 2 && r[1].Node == "ui2" && len(r[1].Cells) == 10 && r[1].Cells[4] == "3"
	})
	for _, row := range r {
		if row.Cells[9] != "ready" || !strings.HasPrefix(row.Cells[1], "127.0.0.1:") {
			t.Errorf("row %+v: want ready and a loopback address", row)
		}
	}
	if r[0].Cells[7] != "0" || r[1].Cells[7] != "1" {
		t.Errorf("topics: %q and %q, want 0 and 1", r[0].Cells[7], r[1].Cells[7])
	}
	t.Logf("CLUSTER UI rows: %+v", r)

	n2.kill(t)
	took := time.Now()
	waitRows("ui2 gone after SIGKILL", 10*time.Second, func(r []clusterPageRow) bool {
		return len(r) == 1 && !slices.ContainsFunc(r, func(x clusterPageRow) bool { return x.Node == "ui2" })
	})
	t.Logf("CLUSTER UI: ui2 left the page %v after SIGKILL (TTL 2s, page refresh 500ms)", time.Since(took).Round(10*time.Millisecond))
}
