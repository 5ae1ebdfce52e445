package pubsub

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"
)

func TestMembersConfig(t *testing.T) {
	status := func(context.Context) Member { return Member{} }
	tests := []struct {
		name string
		cfg  MembersConfig
		ok   bool
	}{
		{"defaults", MembersConfig{Status: status}, true},
		{"no status", MembersConfig{}, false},
		{"TTL not above refresh", MembersConfig{Status: status, Refresh: time.Second, TTL: time.Second}, false},
		{"negative refresh", MembersConfig{Status: status, Refresh: -time.Second}, false},
		{"ID with a space", MembersConfig{Status: status, ID: "a b"}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := NewLocalMembers(tt.cfg)
			if (err == nil) != tt.ok {
				t.Fatalf("NewLocalMembers: %v, want ok %v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrBadMembers) {
				t.Errorf("error %v is not ErrBadMembers", err)
			}
			if err == nil {
				if m.ID() == "" || m.Refresh() != defaultMembersRefresh || m.TTL() != 3*defaultMembersRefresh {
					t.Errorf("defaults: id %q refresh %v TTL %v", m.ID(), m.Refresh(), m.TTL())
				}
				m.Close()
			}
		})
	}
}

func TestLocalMembers(t *testing.T) {
	var streams atomic.Int64
	m, err := NewLocalMembers(MembersConfig{
		ID: "n1", Addr: "a:1", Version: "v", Refresh: 10 * time.Millisecond,
		Status: func(context.Context) Member { return Member{ID: "ignored", Streams: int(streams.Load()), Ready: true} },
	})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Start(); err != nil {
		t.Fatal(err)
	}
	// Registered by Start itself: listed at once.
	view, at, err := m.View()
	if err != nil || at.IsZero() || len(view) != 1 || view[0].ID != "n1" || view[0].Addr != "a:1" || view[0].Version != "v" || !view[0].Ready {
		t.Fatalf("View after Start = %+v, %v, %v", view, at, err)
	}
	streams.Store(7)
	deadline := time.Now().Add(5 * time.Second)
	for {
		if v, _, _ := m.View(); len(v) == 1 && v[0].Streams == 7 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the refresh did not report the new stream count")
		}
		time.Sleep(5 * time.Millisecond)
	}
	if err := m.Start(); err == nil {
		t.Error("second Start succeeded")
	}
	if err := m.Close(); err != nil {
		t.Fatal(err)
	}
	if l, err := m.List(context.Background()); err != nil || len(l) != 0 {
		t.Errorf("List after Close = %v, %v; want no member", l, err)
	}
	if err := m.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestLocalMembersExpire(t *testing.T) {
	s := &localMembers{}
	if err := s.put(context.Background(), Member{ID: "n1"}, 20*time.Millisecond); err != nil {
		t.Fatal(err)
	}
	if l, _ := s.list(context.Background()); len(l) != 1 {
		t.Fatalf("list = %v, want n1", l)
	}
	time.Sleep(40 * time.Millisecond)
	if l, _ := s.list(context.Background()); len(l) != 0 {
		t.Errorf("list after the TTL = %v, want none", l)
	}
}
