package node

import (
	"context"
	_ "embed" // the cluster page
	"encoding/json"
	"net/http"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
)

// clusterView is the body of GET /cluster.
type clusterView struct {
	Self     string          `json:"self"`
	RefreshS float64         `json:"refresh_s"`
	TTLS     float64         `json:"ttl_s"`
	Streams  int             `json:"streams"`   // over all members
	Share    float64         `json:"share"`     // streams per member when balanced
	Rebal    bool            `json:"rebalance"` // this node rebalances
	Members  []pubsub.Member `json:"members"`
}

// serveCluster answers GET /cluster: every live member, read now.
func (n *Node) serveCluster(w http.ResponseWriter, r *http.Request) {
	c := n.cluster.Load()
	var m Membership
	if c != nil {
		m = c.membership()
	}
	if m == nil {
		http.Error(w, "no cluster membership on this node", http.StatusNotFound)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
	defer cancel()
	members, err := m.List(ctx)
	if err != nil {
		http.Error(w, "membership unavailable: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	v := clusterView{
		Self:     m.ID(),
		RefreshS: m.Refresh().Seconds(),
		TTLS:     m.TTL().Seconds(),
		Rebal:    !c.cfg.NoRebalance,
		Members:  members,
	}
	if v.Members == nil {
		v.Members = []pubsub.Member{}
	}
	for _, mb := range members {
		v.Streams += mb.Streams
	}
	if len(members) > 0 {
		v.Share = float64(v.Streams) / float64(len(members))
	}
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

//go:embed cluster_page.html
var clusterPage []byte

// serveClusterPage answers GET /cluster/ui: a page that reads /cluster
// every refresh and shows the nodes, readable without Grafana.
func (n *Node) serveClusterPage(w http.ResponseWriter, _ *http.Request) {
	w.Header().Set("Content-Type", "text/html; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	_, _ = w.Write(clusterPage)
}
