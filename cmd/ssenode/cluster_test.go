package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
)

func TestClusterConfigErrors(t *testing.T) {
	tests := []struct {
		env  map[string]string
		want string
	}{
		{map[string]string{"SSE_CLUSTER_REFRESH": "0s"}, "SSE_CLUSTER_REFRESH"},
		{map[string]string{"SSE_CLUSTER_REFRESH": "5s", "SSE_CLUSTER_TTL": "5s"}, "SSE_CLUSTER_TTL"},
		{map[string]string{"SSE_REBALANCE": "sometimes"}, "SSE_REBALANCE"},
		{map[string]string{"SSE_REBALANCE_RATE": "0"}, "SSE_REBALANCE_RATE"},
		{map[string]string{"SSE_REBALANCE_RATE": "NaN"}, "SSE_REBALANCE_RATE"},
		{map[string]string{"SSE_REBALANCE_RATE": "+Inf"}, "SSE_REBALANCE_RATE"},
		{map[string]string{"SSE_REBALANCE_TOLERANCE": "1.5"}, "SSE_REBALANCE_TOLERANCE"},
		{map[string]string{"SSE_REBALANCE_TOLERANCE": "0"}, "SSE_REBALANCE_TOLERANCE"},
		{map[string]string{"SSE_MAX_STREAM_AGE": "-1h"}, "SSE_MAX_STREAM_AGE"},
	}
	for _, tt := range tests {
		var out, errOut bytes.Buffer
		if code := run(nil, tt.env, &out, &errOut); code != 2 || !strings.Contains(errOut.String(), tt.want) {
			t.Errorf("%v: exit %d, stderr %q; want 2 naming %s", tt.env, code, errOut.String(), tt.want)
		}
	}
	c, err := loadConfig(map[string]string{})
	if err != nil || !c.Rebalance || c.RebalanceRate != 20 || c.RebalanceTolerance != 0.1 || c.MaxStreamAge != 0 {
		t.Errorf("defaults: rebalance %v rate %v tolerance %v max age %v, %v; want true 20 0.1 0",
			c.Rebalance, c.RebalanceRate, c.RebalanceTolerance, c.MaxStreamAge, err)
	}
}

// The embedded broker's membership is the node alone; GET /cluster lists
// it under SSE_NODE_ID with SSE_ADVERTISE_ADDR.
func TestClusterEmbedded(t *testing.T) {
	_, admin := startNode(t, "SSE_NODE_ID=solo", "SSE_ADVERTISE_ADDR=sse.example:443")
	resp, err := http.Get("http://" + admin + "/cluster")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var v struct {
		Self    string `json:"self"`
		Members []struct {
			ID    string `json:"id"`
			Addr  string `json:"addr"`
			Ready bool   `json:"ready"`
		} `json:"members"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&v); err != nil {
		t.Fatal(err)
	}
	if v.Self != "solo" || len(v.Members) != 1 || v.Members[0].ID != "solo" || v.Members[0].Addr != "sse.example:443" || !v.Members[0].Ready {
		t.Errorf("GET /cluster = %+v; want solo alone, ready, at sse.example:443", v)
	}
}
