package bg

import (
	"sync/atomic"
	"testing"
)

func TestGroupStopWaitsAndRefuses(t *testing.T) {
	var g Group
	var done atomic.Int32
	for range 3 {
		if !g.Go(func() {
			<-g.Quit()
			done.Add(1)
		}) {
			t.Fatal("Go refused before Stop")
		}
	}
	if !g.Stop() {
		t.Fatal("first Stop reported false")
	}
	if n := done.Load(); n != 3 {
		t.Fatalf("Stop returned with %d of 3 goroutines done", n)
	}
	if g.Go(func() { t.Error("ran after Stop") }) {
		t.Fatal("Go accepted after Stop")
	}
	if g.Stop() {
		t.Fatal("second Stop reported true")
	}
}
