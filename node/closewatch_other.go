//go:build !linux

package node

// readerWatcher sees clients leave with one small reader goroutine per
// stream, where epoll is not available.
type readerWatcher struct {
	pool *writerPool
}

func newCloseWatcher(p *writerPool) (closeWatcher, error) { return &readerWatcher{pool: p}, nil }

func (w *readerWatcher) add(s *stream) error {
	w.pool.wg.Add(1)
	go func() {
		defer w.pool.wg.Done()
		var b [1]byte
		for {
			if _, err := s.conn.Read(b[:]); err != nil {
				w.pool.end(s, reasonClientGone)
				return
			}
		}
	}()
	return nil
}

func (w *readerWatcher) remove(*stream) {}
func (w *readerWatcher) close()         {}
