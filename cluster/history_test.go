package cluster_test

import (
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"
)

// seqOf lists a client's messages as offset:content.
func seqOf(ms []msg) []string {
	var out []string
	for _, m := range ms {
		if m.Type == "message" {
			out = append(out, fmt.Sprintf("%d:%s", m.Offset, m.Content))
		}
	}
	return out
}

func messages(ms []msg) []msg {
	var out []msg
	for _, m := range ms {
		if m.Type == "message" {
			out = append(out, m)
		}
	}
	return out
}

// checkRun fails unless ms's offsets increase strictly and share one epoch.
func checkRun(t *testing.T, who string, ms []msg) {
	t.Helper()
	for i := 1; i < len(ms); i++ {
		if ms[i].Offset <= ms[i-1].Offset || ms[i].Epoch != ms[0].Epoch || ms[i].Epoch == "" {
			t.Fatalf("%s: message %d is %d/%s after %d/%s", who, i, ms[i].Offset, ms[i].Epoch, ms[i-1].Offset, ms[i-1].Epoch)
		}
	}
}

// TestClusterHistory: with JetStream, every member on every node sees the
// room in the stream's order, and a client that drops recovers from any node,
// even after the node it was on is killed.
func TestClusterHistory(t *testing.T) {
	b := startBrokerJS(t)
	o := nodeOptions{history: true}
	n0, n1, n2 := startNode(t, "h0", b.URL(), o), startNode(t, "h1", b.URL(), o), startNode(t, "h2", b.URL(), o)
	eventually(t, "history on every node", 10*time.Second, func() bool {
		return n0.cl.HistoryOn() && n1.cl.HistoryOn() && n2.cl.HistoryOn()
	})
	a, bb, c := dial(t, n0.url(""), "a"), dial(t, n1.url(""), "b"), dial(t, n2.url(""), "c")
	for _, cl := range []*client{a, bb, c} {
		if j := cl.join("r"); j.Epoch == "" {
			t.Fatalf("%s: joined without epoch", cl.name)
		}
	}
	waitCount(t, "r", 3, n0, n1, n2)

	// Two nodes talk at once: everyone sees one order.
	var wg sync.WaitGroup
	for _, cl := range []*client{a, bb} {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 20 {
				cl.chat("r", fmt.Sprintf("%s%d", cl.name, i))
			}
		}()
	}
	wg.Wait()
	for _, cl := range []*client{a, bb, c} {
		cl.waitFor("40 messages", func(ms []msg) bool { return count(ms, "message") == 40 })
	}
	want := strings.Join(seqOf(a.all()), " ")
	for _, cl := range []*client{bb, c} {
		if got := strings.Join(seqOf(cl.all()), " "); got != want {
			t.Fatalf("%s saw another order:\n%s\nwant\n%s", cl.name, got, want)
		}
	}
	checkRun(t, "a", messages(a.all()))
	lastC := messages(c.all())[39]

	// c drops; the room goes on; c comes back on another node.
	c.close()
	for i := range 10 {
		a.chat("r", fmt.Sprint("while away ", i))
	}
	a.waitFor("50 messages", func(ms []msg) bool { return count(ms, "message") == 50 })
	c2 := dial(t, n1.url(""), "c2")
	c2.send(map[string]any{"type": "join", "roomId": "r", "userName": "c", "since": map[string]any{"offset": lastC.Offset, "epoch": lastC.Epoch}})
	c2.waitFor("joined", func(ms []msg) bool { return count(ms, "joined") == 1 })
	j := last(c2.all(), "joined")
	got := seqOf(c2.all())
	if j.Recovered == nil || !*j.Recovered || j.Replayed != 10 || strings.Join(got, " ") != strings.Join(seqOf(a.all())[40:], " ") {
		t.Fatalf("recovery on another node: %+v, got %v", j, got)
	}

	// A node is killed: the others and the stream carry on, and a client of
	// the dead node recovers on a live one.
	lastB := messages(bb.all())
	lb := lastB[len(lastB)-1]
	n1.kill()
	for i := range 5 {
		a.chat("r", fmt.Sprint("after kill ", i))
	}
	a.waitFor("55 messages", func(ms []msg) bool { return count(ms, "message") == 55 })
	b2 := dial(t, n2.url(""), "b2")
	b2.send(map[string]any{"type": "join", "roomId": "r", "userName": "b", "since": map[string]any{"offset": lb.Offset, "epoch": lb.Epoch}})
	b2.waitFor("joined", func(ms []msg) bool { return count(ms, "joined") == 1 })
	j = last(b2.all(), "joined")
	all := seqOf(a.all())
	var wantB []string
	for _, s := range all {
		var off uint64
		fmt.Sscanf(s, "%d:", &off)
		if off > lb.Offset {
			wantB = append(wantB, s)
		}
	}
	if j.Recovered == nil || !*j.Recovered || strings.Join(seqOf(b2.all()), " ") != strings.Join(wantB, " ") {
		t.Fatalf("recovery after a kill: %+v, got %v want %v", j, seqOf(b2.all()), wantB)
	}

	// The history request and the API page the stream.
	var page struct {
		Epoch    string `json:"epoch"`
		Offset   uint64 `json:"offset"`
		Messages []msg  `json:"messages"`
		More     bool   `json:"more"`
	}
	if st := n2.get("/api/rooms/r/history?limit=5", &page); st != 200 || len(page.Messages) != 5 || !page.More ||
		strings.Join(seqOf(page.Messages), " ") != strings.Join(all[50:], " ") || page.Epoch != lb.Epoch {
		t.Fatalf("API history: %d %+v", st, page)
	}
	b2.send(map[string]any{"type": "history", "roomId": "r", "before": page.Messages[0].Offset, "limit": 3})
	b2.waitFor("history-page", func(ms []msg) bool { return count(ms, "history-page") == 1 })
}

// Without JetStream on the broker, chat goes on live only, and recovery says
// it could not.
func TestClusterHistoryUnreachable(t *testing.T) {
	b := startBroker(t, 0)
	o := nodeOptions{history: true}
	n0, n1 := startNode(t, "u0", b.URL(), o), startNode(t, "u1", b.URL(), o)
	a, c := dial(t, n0.url(""), "a"), dial(t, n1.url(""), "c")
	a.join("r")
	c.join("r")
	waitCount(t, "r", 2, n0, n1)
	a.chat("r", "live")
	c.waitFor("live message", func(ms []msg) bool { return count(ms, "message") == 1 })
	c2 := dial(t, n1.url(""), "c2")
	c2.send(map[string]any{"type": "join", "roomId": "r", "userName": "c", "since": map[string]any{"offset": 1, "epoch": "e"}})
	c2.waitFor("joined", func(ms []msg) bool { return count(ms, "joined") == 1 })
	if j := last(c2.all(), "joined"); j.Recovered == nil || *j.Recovered {
		t.Fatalf("joined %+v; want recovered false", j)
	}
	if st := n1.chat.Stats(); st.Unrecovered != 1 {
		t.Errorf("unrecovered %d, want 1", st.Unrecovered)
	}
}
