package main

import (
	"bytes"
	"strconv"

	"github.com/ssecluster/ssecluster/pubsub"
)

// payload is what the publisher puts in each event, as flat JSON:
//
//	{"r":<run>,"t":<topic index>,"seq":<publish index>,"ts":<unix ns>,"pad":"xxx…"}
//
// r tells this run's events from anything else on the stream; t and seq
// locate the event in the publisher's log; ts is the send time, for the
// publish-to-receive latency.
type payload struct {
	run   uint64
	topic int64
	seq   int64
	ts    int64
}

// appendPayload appends the JSON payload, padded with 'x' so that it is
// size bytes long when size allows.
func appendPayload(b []byte, p payload, size int) []byte {
	start := len(b)
	b = append(b, `{"r":`...)
	b = strconv.AppendUint(b, p.run, 10)
	b = append(b, `,"t":`...)
	b = strconv.AppendInt(b, p.topic, 10)
	b = append(b, `,"seq":`...)
	b = strconv.AppendInt(b, p.seq, 10)
	b = append(b, `,"ts":`...)
	b = strconv.AppendInt(b, p.ts, 10)
	b = append(b, `,"pad":"`...)
	for n := size - (len(b) - start) - 2; n > 0; n-- {
		b = append(b, 'x')
	}
	return append(b, `"}`...)
}

// scanPayload reads r, t, seq and ts from the start of a payload without
// encoding/json: keys with non-negative integer values, in any order, up to
// the first value that is not a number. ok is false unless all four are found.
func scanPayload(b []byte) (p payload, ok bool) {
	const (
		hasR = 1 << iota
		hasT
		hasSeq
		hasTS
		hasAll = hasR | hasT | hasSeq | hasTS
	)
	var have int
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return p, false
	}
	i++
	for have != hasAll {
		i = skipSpace(b, i)
		if i >= len(b) || b[i] != '"' {
			return p, false
		}
		k := bytes.IndexByte(b[i+1:], '"')
		if k < 0 {
			return p, false
		}
		key := b[i+1 : i+1+k]
		i = skipSpace(b, i+k+2)
		if i >= len(b) || b[i] != ':' {
			return p, false
		}
		i = skipSpace(b, i+1)
		v, n, vok := parseDigits(b[i:])
		if !vok {
			return p, false
		}
		i += n
		switch string(key) {
		case "r":
			p.run, have = v, have|hasR
		case "t":
			p.topic, have = int64(v), have|hasT
		case "seq":
			p.seq, have = int64(v), have|hasSeq
		case "ts":
			p.ts, have = int64(v), have|hasTS
		}
		i = skipSpace(b, i)
		if i >= len(b) || b[i] != ',' {
			break
		}
		i++
	}
	return p, have == hasAll && p.topic >= 0 && p.seq >= 0
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t') {
		i++
	}
	return i
}

// parseDigits parses the leading decimal digits of b (at most 19, so the
// value fits an int64) and returns the value and how many bytes it used.
func parseDigits(b []byte) (v uint64, n int, ok bool) {
	for n < len(b) && b[n] >= '0' && b[n] <= '9' {
		if n == 19 {
			return 0, 0, false
		}
		v = v*10 + uint64(b[n]-'0')
		n++
	}
	return v, n, n > 0
}

// parseUintBytes parses b, which must be 1 to 20 decimal digits, as a uint64.
func parseUintBytes(b []byte) (uint64, bool) {
	if len(b) == 0 || len(b) > 20 {
		return 0, false
	}
	var v uint64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		d := uint64(c - '0')
		if v > (^uint64(0)-d)/10 {
			return 0, false
		}
		v = v*10 + d
	}
	return v, true
}

// parseIDBytes parses "<ms>-<seq>" or a bare "<ms>" like pubsub.ParseID,
// without allocating.
func parseIDBytes(b []byte) (pubsub.ID, bool) {
	ms, seq := b, []byte(nil)
	if i := bytes.IndexByte(b, '-'); i >= 0 {
		ms, seq = b[:i], b[i+1:]
		if len(seq) == 0 {
			return pubsub.ID{}, false
		}
	}
	m, ok := parseUintBytes(ms)
	if !ok {
		return pubsub.ID{}, false
	}
	var s uint64
	if seq != nil {
		if s, ok = parseUintBytes(seq); !ok {
			return pubsub.ID{}, false
		}
	}
	return pubsub.ID{Ms: m, Seq: s}, true
}

// idPart returns the k-th comma-separated part of a (multi-topic) event ID.
func idPart(b []byte, k int) []byte {
	for ; k > 0; k-- {
		i := bytes.IndexByte(b, ',')
		if i < 0 {
			return nil
		}
		b = b[i+1:]
	}
	if i := bytes.IndexByte(b, ','); i >= 0 {
		b = b[:i]
	}
	return b
}

// gapTopic returns the topic named in an sse-gap event's JSON data.
func gapTopic(data []byte) []byte {
	const key = `"topic":"`
	i := bytes.Index(data, []byte(key))
	if i < 0 {
		return nil
	}
	rest := data[i+len(key):]
	j := bytes.IndexByte(rest, '"')
	if j < 0 {
		return nil
	}
	return rest[:j]
}
