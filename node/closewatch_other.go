//go:build !linux

package node

// readerWatcher sees clients leave with one small reader goroutine per
// stream, where epoll is not available.
type readerWatcher struct {
	l *lean
}

func newCloseWatcher(l *lean) (closeWatcher, error) { return &readerWatcher{l: l}, nil }

func (w *readerWatcher) add(lc *leanConn) error {
	w.l.wg.Add(1)
	go func() {
		defer w.l.wg.Done()
		var b [1]byte
		for {
			if _, err := lc.conn.Read(b[:]); err != nil {
				lc.close(reasonClientGone)
				return
			}
		}
	}()
	return nil
}

func (w *readerWatcher) remove(*leanConn) {}
func (w *readerWatcher) close()           {}
