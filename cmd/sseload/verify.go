package main

import (
	"context"
	"hash/crc32"
	"sync"

	"github.com/ssecluster/ssecluster/pubsub"
)

// castagnoli is CRC-32C, computed in hardware on amd64 and arm64: -verify
// hashes every byte every client receives, up to 50 MiB × 200 clients.
var castagnoli = crc32.MakeTable(crc32.Castagnoli)

// payloadSum is a payload's size and CRC-32C.
type payloadSum struct {
	n   int64
	crc uint32
}

// lineSum hashes one data line as it streams past, possibly in several
// pieces (the line reader hands out the start of a long line and skips the
// rest). A CR at the end of a piece is held back: it is the line ending's
// when the LF follows, content otherwise.
type lineSum struct {
	payloadSum
	cr bool // a CR held back from the end of the last piece
}

var crByte = []byte{'\r'}

// write adds the next piece of the line.
func (s *lineSum) write(b []byte) {
	if len(b) == 0 {
		return
	}
	if s.cr {
		s.add(crByte)
		s.cr = false
	}
	if b[len(b)-1] == '\r' {
		s.cr = true
		b = b[:len(b)-1]
	}
	s.add(b)
}

func (s *lineSum) add(b []byte) {
	s.crc = crc32.Update(s.crc, castagnoli, b)
	s.n += int64(len(b))
}

// content ends a line whose ending is already gone: a held-back CR was data.
func (s *lineSum) content() {
	if s.cr {
		s.add(crByte)
		s.cr = false
	}
}

// sumOf is the size and CRC-32C of b.
func sumOf(b []byte) payloadSum {
	return payloadSum{n: int64(len(b)), crc: crc32.Checksum(b, castagnoli)}
}

// sumLog is what was published on each topic with -verify, by seq. The
// sum is stored before the XADD, so a client that receives an event always
// finds it. Events that need verifying are few and large: a map will do.
type sumLog struct {
	mu   sync.Mutex
	sums map[[2]int64]payloadSum // {topic, seq}
}

func (l *sumLog) store(topic, seq int64, s payloadSum) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.sums == nil {
		l.sums = make(map[[2]int64]payloadSum)
	}
	l.sums[[2]int64{topic, seq}] = s
}

func (l *sumLog) at(topic, seq int64) (payloadSum, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	s, ok := l.sums[[2]int64{topic, seq}]
	return s, ok
}

// check counts a received payload as verified or corrupt.
func (l *sumLog) check(t *tally, topic, seq int64, got payloadSum) {
	want, ok := l.at(topic, seq)
	switch {
	case !ok:
		t.unverified++
	case want != got:
		t.corrupt++
	default:
		t.whole++
	}
}

// summingPublisher records each payload's sum before publishing it. The
// payload names its own topic index and seq.
type summingPublisher struct {
	publisher
	log *sumLog
}

func (p *summingPublisher) publish(ctx context.Context, topic string, data []byte) (pubsub.ID, error) {
	if pl, ok := scanPayload(data); ok {
		p.log.store(pl.topic, pl.seq, sumOf(data))
	}
	return p.publisher.publish(ctx, topic, data)
}
