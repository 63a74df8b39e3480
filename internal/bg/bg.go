// Package bg gives a component's background goroutines an owner that waits
// for them. Go refuses once Stop has begun, so no goroutine starts after its
// owner has stopped waiting, and Stop closes Quit and waits for every one.
// The server's monitor and the cluster node's workers are started this way.
package bg

import "sync"

// Group is a set of goroutines stopped together. The zero value is ready.
type Group struct {
	mu      sync.Mutex // held while a goroutine starts and while Stop begins
	stopped bool       // guarded by mu
	quit    chan struct{}
	once    sync.Once
	wg      sync.WaitGroup
}

// Quit is closed when Stop begins; every goroutine of the group must return
// once it is.
func (g *Group) Quit() <-chan struct{} {
	g.once.Do(func() { g.quit = make(chan struct{}) })
	return g.quit
}

// Go runs f on a new goroutine of the group, unless Stop has begun; it reports
// whether it did.
func (g *Group) Go(f func()) bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	if g.stopped {
		return false
	}
	g.wg.Add(1)
	go func() {
		defer g.wg.Done()
		f()
	}()
	return true
}

// Stop closes Quit and waits for the group's goroutines to return. It reports
// false if the group was stopped already, and then does not wait.
func (g *Group) Stop() bool {
	g.Quit() // made, if no goroutine asked for it yet
	g.mu.Lock()
	if g.stopped {
		g.mu.Unlock()
		return false
	}
	g.stopped = true
	close(g.quit)
	g.mu.Unlock()
	g.wg.Wait()
	return true
}
