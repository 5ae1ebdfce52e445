package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/ssecluster/ssecluster/pubsub"
)

// publisher appends one event to a topic and returns its stream ID. It is
// called concurrently, from one goroutine per topic.
type publisher interface {
	publish(ctx context.Context, topic string, data []byte) (pubsub.ID, error)
	close() error
}

// redisPublisher XADDs with a pubsub.Redis broker that is never started:
// its Publish is what any Go publisher would call, and it owns the only
// Redis client sseload needs.
type redisPublisher struct {
	b     *pubsub.Redis
	event string
}

// newRedisPublisher publishes to the server at rawURL, to streams
// <prefix><topic> trimmed to maxLen (0: not trimmed).
func newRedisPublisher(rawURL, prefix, event string, maxLen int64) (*redisPublisher, error) {
	if maxLen == 0 {
		maxLen = -1 // pubsub's "no MAXLEN"; its zero means the default
	}
	b, err := pubsub.NewRedis(pubsub.RedisConfig{URL: rawURL, Prefix: prefix, MaxLen: maxLen})
	if err != nil {
		return nil, fmt.Errorf("sseload: -redis %q: %w", rawURL, err)
	}
	return &redisPublisher{b: b, event: event}, nil
}

func (p *redisPublisher) publish(ctx context.Context, topic string, data []byte) (pubsub.ID, error) {
	return p.b.Publish(ctx, topic, p.event, data)
}

func (p *redisPublisher) close() error { return p.b.Close() }

// commandStats returns INFO commandstats as command -> calls.
func (p *redisPublisher) commandStats(ctx context.Context) (map[string]int64, error) {
	return p.b.CommandCalls(ctx)
}

// httpPublisher uses a node's POST /publish, the way to publish to an
// embedded-mode node. The payload is JSON, so it goes as a JSON value and
// the node sends its text unchanged.
type httpPublisher struct {
	url    string
	event  string
	token  string
	client *http.Client
}

func newHTTPPublisher(base, event, token string) *httpPublisher {
	u := strings.TrimRight(base, "/")
	if !strings.HasSuffix(u, "/publish") {
		u += "/publish"
	}
	return &httpPublisher{url: u, event: event, token: token, client: &http.Client{Timeout: 10 * time.Second}}
}

func (p *httpPublisher) publish(ctx context.Context, topic string, data []byte) (pubsub.ID, error) {
	// Called from one goroutine per topic: the body is not shared.
	b := make([]byte, 0, len(data)+len(topic)+len(p.event)+48)
	b = append(b, `{"topic":`...)
	b = strconv.AppendQuote(b, topic)
	if p.event != "" {
		b = append(b, `,"event":`...)
		b = strconv.AppendQuote(b, p.event)
	}
	b = append(b, `,"data":`...)
	b = append(b, data...)
	b = append(b, '}')
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url, bytes.NewReader(b))
	if err != nil {
		return pubsub.ID{}, fmt.Errorf("sseload: publish to %s: %w", p.url, err)
	}
	req.Header.Set("Content-Type", "application/json")
	if p.token != "" {
		req.Header.Set("Authorization", "Bearer "+p.token)
	}
	resp, err := p.client.Do(req)
	if err != nil {
		return pubsub.ID{}, fmt.Errorf("sseload: publish to %s: %w", p.url, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if err != nil {
		return pubsub.ID{}, fmt.Errorf("sseload: publish to %s: read reply: %w", p.url, err)
	}
	if resp.StatusCode != http.StatusOK {
		return pubsub.ID{}, fmt.Errorf("sseload: publish to %s: %s: %s", p.url, resp.Status, bytes.TrimSpace(body))
	}
	var reply struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(body, &reply); err != nil {
		return pubsub.ID{}, fmt.Errorf("sseload: publish to %s: reply %q: %w", p.url, body, err)
	}
	id, err := pubsub.ParseID(reply.ID)
	if err != nil {
		return pubsub.ID{}, fmt.Errorf("sseload: publish to %s: reply: %w", p.url, err)
	}
	return id, nil
}

func (p *httpPublisher) close() error {
	p.client.CloseIdleConnections()
	return nil
}

// pubStats are one topic publisher's counts.
type pubStats struct {
	sent, errors int64
	firstErr     error
}

// publishLoop publishes to one topic at rate events/s (as fast as possible
// when rate <= 0) until count events are sent, until is reached, stop is
// closed, or ctx ends. Falling behind the schedule publishes back to back,
// without bursting beyond it. Every seq's outcome is recorded in log; a
// publish cut short by ctx is recorded as failed but not counted an error.
func publishLoop(ctx context.Context, stop <-chan struct{}, pub publisher, log *pubLog, topic string, topicIdx int, run uint64,
	rate float64, size int, count int64, until time.Time) pubStats {
	var st pubStats
	var interval time.Duration
	if rate > 0 {
		interval = time.Duration(float64(time.Second) / rate)
	}
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	buf := make([]byte, 0, size+128)
	next := time.Now()
	for n := int64(0); count <= 0 || n < count; n++ {
		if ctx.Err() != nil || (!until.IsZero() && !time.Now().Before(until)) || closed(stop) {
			break
		}
		if interval > 0 {
			if d := time.Until(next); d > 0 {
				timer.Reset(d)
				select {
				case <-ctx.Done():
					return st
				case <-stop:
					return st
				case <-timer.C:
				}
			}
			next = next.Add(interval)
		}
		seq, err := log.begin()
		if err != nil {
			st.errors++
			if st.firstErr == nil {
				st.firstErr = err
			}
			break
		}
		buf = appendPayload(buf[:0], payload{run: run, topic: int64(topicIdx), seq: seq, ts: time.Now().UnixNano()}, size)
		id, err := pub.publish(ctx, topic, buf)
		if err != nil {
			log.record(seq, pubsub.ID{})
			if ctx.Err() != nil {
				break
			}
			st.errors++
			if st.firstErr == nil {
				st.firstErr = err
			}
			continue
		}
		log.record(seq, id)
		st.sent++
	}
	return st
}

// closed reports whether ch is closed (false for nil).
func closed(ch <-chan struct{}) bool {
	select {
	case <-ch:
		return true
	default:
		return false
	}
}
