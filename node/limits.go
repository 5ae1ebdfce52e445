package node

import (
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Limits on what one client may take (issue 6): the origins a browser page
// may subscribe from (CORS), and the streams one address may hold open.
// The other limits sit elsewhere: header bytes in cmd/ssenode's
// http.Server, topics per stream (Config.MaxTopics) and the Last-Event-ID
// length (replay.MaxLastEventIDLen) in parseSubscribe.

// cors answers cross-origin requests for an allowlist of origins.
type cors struct {
	any     bool                // "*" is in the list
	origins map[string]struct{} // lower-cased scheme://host[:port]
}

// newCORS returns nil for an empty list: no CORS headers at all.
func newCORS(list []string) (*cors, error) {
	if len(list) == 0 {
		return nil, nil
	}
	c := &cors{origins: make(map[string]struct{})}
	for _, o := range list {
		o = strings.TrimSpace(o)
		switch {
		case o == "*":
			c.any = true
		case o == "":
		case !strings.HasPrefix(o, "http://") && !strings.HasPrefix(o, "https://") || strings.Count(o, "/") != 2:
			return nil, fmt.Errorf("node: CORS origin %q: want * or scheme://host[:port]", o)
		default:
			c.origins[strings.ToLower(o)] = struct{}{}
		}
	}
	return c, nil
}

func (c *cors) allowed(origin string) bool {
	if c.any {
		return true
	}
	_, ok := c.origins[strings.ToLower(origin)]
	return ok
}

// handle sets the CORS headers of a request from an allowed origin and
// answers its preflight. It returns next false when it has answered: a
// preflight, or a 403 for an origin not allowed (refused true). A request
// without Origin is not a browser's cross-origin request and passes
// untouched.
func (c *cors) handle(w http.ResponseWriter, r *http.Request) (next, refused bool) {
	h := w.Header()
	h.Add("Vary", "Origin")
	origin := r.Header.Get("Origin")
	if origin == "" {
		return true, false
	}
	if !c.allowed(origin) {
		http.Error(w, fmt.Sprintf("forbidden: origin %q is not allowed (SSE_CORS_ORIGINS)", truncate(origin, 128)), http.StatusForbidden)
		return false, true
	}
	h.Set("Access-Control-Allow-Origin", origin)
	if !c.any {
		// Cookies (EventSource withCredentials) need an explicit origin.
		h.Set("Access-Control-Allow-Credentials", "true")
	}
	if r.Method == http.MethodOptions && r.Header.Get("Access-Control-Request-Method") != "" {
		h.Set("Access-Control-Allow-Methods", "GET")
		h.Set("Access-Control-Allow-Headers", "Authorization, Last-Event-ID, Cache-Control")
		h.Set("Access-Control-Max-Age", "600")
		w.WriteHeader(http.StatusNoContent)
		return false, false
	}
	return true, false
}

// ipLimiter counts open streams per client address. An IPv6 client is
// counted by its /64, which one host usually holds whole. Entries go when
// their count drops to zero, so its memory follows open streams.
type ipLimiter struct {
	max     int
	trusted []netip.Prefix // proxies whose X-Forwarded-For is believed; immutable

	mu    sync.Mutex
	count map[netip.Addr]int
}

func newIPLimiter(max int, trusted []netip.Prefix) *ipLimiter {
	return &ipLimiter{max: max, trusted: trusted, count: make(map[netip.Addr]int)}
}

// acquire counts a new stream from a; false when a already has max.
func (l *ipLimiter) acquire(a netip.Addr) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.count[a] >= l.max {
		return false
	}
	l.count[a]++
	return true
}

// release uncounts a stream from a.
func (l *ipLimiter) release(a netip.Addr) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if c := l.count[a]; c > 1 {
		l.count[a] = c - 1
	} else {
		delete(l.count, a)
	}
}

// key is the address r's streams are counted under: the peer's, or, when
// the peer is a trusted proxy, the nearest address in X-Forwarded-For that
// is not one (proxies append the address they saw, so the rightmost
// untrusted entry is the one no client can forge). IPv6 addresses are
// reduced to their /64. The zero Addr (unparsable) is a key too: such
// requests share one count.
func (l *ipLimiter) key(r *http.Request) netip.Addr {
	a := remoteAddr(r)
	if l.isTrusted(a) {
		fwd := r.Header.Values("X-Forwarded-For")
	outer:
		for i := len(fwd) - 1; i >= 0; i-- {
			parts := strings.Split(fwd[i], ",")
			for j := len(parts) - 1; j >= 0; j-- {
				p, err := netip.ParseAddr(strings.TrimSpace(parts[j]))
				if err != nil {
					break outer // garbage: stop at the last address we trust
				}
				a = p.Unmap()
				if !l.isTrusted(a) {
					break outer
				}
			}
		}
	}
	if a.Is6() {
		p, _ := a.Prefix(64)
		a = p.Addr()
	}
	return a
}

func (l *ipLimiter) isTrusted(a netip.Addr) bool {
	for _, p := range l.trusted {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

func remoteAddr(r *http.Request) netip.Addr {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		host = r.RemoteAddr
	}
	a, _ := netip.ParseAddr(host)
	return a.Unmap()
}

// ParseTrustedProxies parses a list of CIDR prefixes or single addresses.
func ParseTrustedProxies(list []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range list {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		if !strings.Contains(s, "/") {
			a, err := netip.ParseAddr(s)
			if err != nil {
				return nil, fmt.Errorf("node: trusted proxy %q: %w", s, err)
			}
			out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
			continue
		}
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("node: trusted proxy %q: %w", s, err)
		}
		out = append(out, p.Masked())
	}
	return out, nil
}

// tooMany answers a client over its per-address limit.
func (n *Node) tooMany(w http.ResponseWriter) {
	n.m.connTotal.WithLabelValues(outcomeIPLimit).Inc()
	w.Header().Set("Retry-After", strconv.Itoa(max(1, int(n.cfg.Retry/time.Second))))
	http.Error(w, fmt.Sprintf("too many streams from your address: at most %d", n.cfg.MaxConnectionsPerIP), http.StatusTooManyRequests)
}

// denied answers a request an Authorizer refused.
func (n *Node) denied(w http.ResponseWriter, err error) {
	status, outcome := deniedStatus(err), outcomeForbidden
	if status == http.StatusUnauthorized {
		outcome = outcomeUnauthorized
		w.Header().Set("WWW-Authenticate", `Bearer realm="sse"`)
	}
	n.m.connTotal.WithLabelValues(outcome).Inc()
	http.Error(w, err.Error(), status)
}
