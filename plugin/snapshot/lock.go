package snapshot

import (
	"context"
	"sync"
)

// keyedMutex is a set of mutexes by name whose Lock can be abandoned with the context.
type keyedMutex struct {
	mu    sync.Mutex
	locks map[string]*keyLock
}

type keyLock struct {
	held  chan struct{} // holds one token while locked
	users int           // holders and waiters; the entry is dropped at zero
}

func newKeyedMutex() *keyedMutex {
	return &keyedMutex{locks: map[string]*keyLock{}}
}

// lock waits for the mutex named key and returns its unlock function, or ctx's error when ctx
// ends first.
func (k *keyedMutex) lock(ctx context.Context, key string) (unlock func(), err error) {
	k.mu.Lock()
	l, ok := k.locks[key]
	if !ok {
		l = &keyLock{held: make(chan struct{}, 1)}
		k.locks[key] = l
	}
	l.users++
	k.mu.Unlock()

	select {
	case l.held <- struct{}{}:
		return func() {
			<-l.held
			k.release(key, l)
		}, nil
	case <-ctx.Done():
		k.release(key, l)
		return nil, ctx.Err()
	}
}

func (k *keyedMutex) release(key string, l *keyLock) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if l.users--; l.users == 0 {
		delete(k.locks, key)
	}
}
