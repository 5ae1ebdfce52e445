package node

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime"
	"net/http"
	"net/http/pprof"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/ssecluster/ssecluster/pubsub"
)

// MaxPublishBytes bounds the body of POST /publish.
const MaxPublishBytes = 4 << 20

// AdminHandler returns the admin listener's handler: /metrics from g,
// /healthz, /readyz, /debug/pprof/, POST /publish, and with a Cluster
// GET /cluster (JSON) and /cluster/ui (a page).
func (n *Node) AdminHandler(g prometheus.Gatherer) http.Handler {
	mux := http.NewServeMux()
	if g != nil {
		mux.Handle("/metrics", promhttp.HandlerFor(g, promhttp.HandlerOpts{}))
	}
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), time.Second)
		defer cancel()
		if err := n.Ready(ctx); err != nil {
			http.Error(w, "not ready: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		_, _ = io.WriteString(w, "ready\n")
	})
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	mux.HandleFunc("/publish", n.servePublish)
	mux.HandleFunc("/cluster", n.serveCluster)
	mux.HandleFunc("/cluster/ui", n.serveClusterPage)
	return mux
}

// publishRequest is the body of POST /publish.
type publishRequest struct {
	Topic string          `json:"topic"`
	Event string          `json:"event"`
	Data  json.RawMessage `json:"data"`
}

// servePublish appends one event: form fields or a JSON object with topic,
// event and data. A JSON data that is not a string is sent as its JSON text.
func (n *Node) servePublish(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", "POST")
		http.Error(w, "method not allowed: use POST", http.StatusMethodNotAllowed)
		return
	}
	if n.cfg.PublishToken != "" && !checkBearer(r, n.cfg.PublishToken) {
		w.Header().Set("WWW-Authenticate", `Bearer realm="sse-publish"`)
		http.Error(w, "unauthorized: POST /publish needs Authorization: Bearer <SSE_PUBLISH_TOKEN>", http.StatusUnauthorized)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, MaxPublishBytes)
	topic, event, data, err := parsePublish(r)
	if err != nil {
		code := http.StatusBadRequest
		var tooBig *http.MaxBytesError
		switch {
		case errors.As(err, &tooBig):
			code = http.StatusRequestEntityTooLarge
		case errors.Is(err, errMediaType):
			code = http.StatusUnsupportedMediaType
		}
		http.Error(w, err.Error(), code)
		return
	}
	id, err := n.broker.Publish(r.Context(), topic, event, data)
	if err != nil {
		switch {
		case errors.Is(err, pubsub.ErrBadTopic), errors.Is(err, pubsub.ErrBadEvent):
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		case errors.Is(err, pubsub.ErrTooLarge):
			http.Error(w, err.Error(), http.StatusRequestEntityTooLarge)
			return
		}
		n.log.Warn("publish failed", "topic", topic, "err", err)
		http.Error(w, "publish failed: "+err.Error(), http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	_, _ = fmt.Fprintf(w, "{\"id\":%q}\n", id.String())
}

// errNoData refuses a publish without a data field: most likely a
// misnamed field, which would otherwise go out as an empty event. An empty
// data field (data= or "data":"") is an empty event.
var errNoData = errors.New(`bad body: no data field (send data= or "data":"" for an empty event)`)

// errMediaType refuses a body that is neither a form nor JSON (a form sent
// without its Content-Type, say): its fields cannot be read, and it used to
// go out as an empty event.
var errMediaType = errors.New("unsupported Content-Type: send application/x-www-form-urlencoded, multipart/form-data or application/json")

func parsePublish(r *http.Request) (topic, event string, data []byte, err error) {
	ct, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type"))
	switch ct {
	case "application/json":
		var req publishRequest
		dec := json.NewDecoder(r.Body)
		if err := dec.Decode(&req); err != nil {
			return "", "", nil, fmt.Errorf("bad JSON body: %w", err)
		}
		// One object: a second one, or anything but space after it, was
		// silently dropped.
		if _, err := dec.Token(); !errors.Is(err, io.EOF) {
			var tooBig *http.MaxBytesError
			if errors.As(err, &tooBig) {
				return "", "", nil, fmt.Errorf("bad JSON body: %w", err)
			}
			return "", "", nil, errors.New("bad JSON body: more than one JSON value")
		}
		topic, event = req.Topic, req.Event
		if req.Data == nil {
			return "", "", nil, errNoData
		}
		if req.Data[0] == '"' {
			var s string
			if err := json.Unmarshal(req.Data, &s); err != nil {
				return "", "", nil, fmt.Errorf("bad data: %w", err)
			}
			data = []byte(s)
		} else {
			data = req.Data
		}
	case "application/x-www-form-urlencoded", "multipart/form-data":
		// The body is already bounded by MaxPublishBytes, so a multipart
		// form stays in memory. ParseMultipartForm on a urlencoded body
		// would drop ParseForm's error (a body over the bound, a bad
		// escape) and leave no fields: the client got "no data field".
		var err error
		if ct == "multipart/form-data" {
			err = r.ParseMultipartForm(MaxPublishBytes)
		} else {
			err = r.ParseForm()
		}
		if err != nil {
			return "", "", nil, fmt.Errorf("bad form body: %w", err)
		}
		if r.MultipartForm != nil {
			defer r.MultipartForm.RemoveAll()
		}
		if _, ok := r.PostForm["data"]; !ok {
			return "", "", nil, errNoData
		}
		// Cloned: a urlencoded value is a piece of the whole body's
		// string, which a topic name or event type kept by the broker
		// would hold (up to MaxPublishBytes each).
		topic, event, data = strings.Clone(r.PostForm.Get("topic")), strings.Clone(r.PostForm.Get("event")), []byte(r.PostForm.Get("data"))
		if topic == "" {
			topic = r.URL.Query().Get("topic")
		}
	default:
		return "", "", nil, fmt.Errorf("%w (got %q)", errMediaType, truncate(r.Header.Get("Content-Type"), 64))
	}
	if err := pubsub.ValidateTopic(topic); err != nil {
		return "", "", nil, fmt.Errorf("bad topic %q: %w", truncate(topic, 64), err)
	}
	if err := pubsub.ValidateEvent(event); err != nil {
		return "", "", nil, fmt.Errorf("bad event %q: %w", truncate(event, 64), err)
	}
	return topic, event, data, nil
}
