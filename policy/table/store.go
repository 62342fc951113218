package table

import (
	"sync"
	"sync/atomic"

	"github.com/podgate/podgate/internal/addrmap"
)

// Store publishes the current [Table]. Readers call [Store.Load] without
// locking; a writer publishes a new table with [Store.Publish]. The zero
// Store holds no table.
type Store struct {
	cur atomic.Pointer[Table]
	mu  sync.Mutex // serializes publishers
	gen uint64
	on  []func() // called after each publication
}

// OnPublish makes fn run after every later [Store.Publish], in the
// publisher's goroutine, with the new table already loadable. fn must not
// block or publish: a reader that sleeps while idle uses it to wake up.
func (s *Store) OnPublish(fn func()) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.on = append(s.on, fn)
}

// Load returns the current table, or nil before the first publication.
func (s *Store) Load() *Table { return s.cur.Load() }

// Publish makes t the current table, numbering it with the next
// generation, which it returns. t must not have been published before;
// readers holding the previous table keep a consistent snapshot.
func (s *Store) Publish(t *Table) uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.gen++
	t.generation = s.gen
	s.cur.Store(t)
	for _, fn := range s.on {
		fn()
	}
	return s.gen
}

// Empty returns a table with no pods and no policies: every address is
// outside the cluster and nothing is isolated.
func Empty() *Table {
	return New(&Spec{ByAddr: addrmap.New[int32](0, 0)})
}
