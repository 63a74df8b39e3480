package bench

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"

	"github.com/throng-ws/throng/auth"
)

// RecoveryConfig configures RunRecovery: rooms chat at a steady rate while
// their members drop and redial at random, each redial asking to recover from
// the last message it had; at the end every member's messages are checked
// against the room's history.
type RecoveryConfig struct {
	// URLs are the /ws URLs of the nodes; members spread over them, and a
	// member that drops redials the next one.
	URLs []string
	// APIs are the nodes' HTTP base URLs (http://host:port), tried in turn
	// for the rooms' histories at the end.
	APIs []string
	// APIKey is the bearer key of the HTTP API.
	APIKey string
	// JWTSecret, if set, signs a token per connection.
	JWTSecret string
	// Rooms, RoomSize: how many rooms, and members each (besides a sender).
	Rooms, RoomSize int
	// RoomRate is messages per second per room.
	RoomRate float64
	// Duration is how long the rooms chat.
	Duration time.Duration
	// DropEvery is the mean time between a member's drops (exponential).
	DropEvery time.Duration
	// Settle is how long the members stay, without drops, after the chat
	// stops, to recover the tail. If zero, 3s.
	Settle time.Duration
}

// RecoveryResult is what RunRecovery found.
type RecoveryResult struct {
	Rooms, Members int
	Sent           uint64 // messages the senders wrote
	InHistory      int    // messages in the rooms' histories at the end
	Deliveries     uint64 // messages the members got, replays included
	Drops          uint64 // connections the members dropped on purpose
	Rejoins        uint64 // joins after a drop
	Recovered      uint64 // rejoins answered recovered: true
	NotRecovered   uint64 // rejoins answered recovered: false
	Missing        uint64 // history messages after a member's first join it never got
	Duplicated     uint64 // messages a member got more than once
	OutOfOrder     uint64 // messages with an offset not above the one before
	DialErrors     uint64
	Seconds        float64
}

// OK reports whether every member got every message once, in order.
func (r *RecoveryResult) OK() bool {
	return r.Missing == 0 && r.Duplicated == 0 && r.OutOfOrder == 0 && r.InHistory > 0
}

func (r *RecoveryResult) String() string {
	return fmt.Sprintf("rooms %d x %d members, %.0fs: sent %d, in history %d, deliveries %d, drops %d, rejoins %d (recovered %d, not %d), dial errors %d\nmissing %d, duplicated %d, out of order %d",
		r.Rooms, r.Members/max(r.Rooms, 1), r.Seconds, r.Sent, r.InHistory, r.Deliveries, r.Drops, r.Rejoins, r.Recovered, r.NotRecovered, r.DialErrors,
		r.Missing, r.Duplicated, r.OutOfOrder)
}

type recvMsg struct {
	Type      string `json:"type"`
	RoomID    string `json:"roomId"`
	Content   string `json:"content"`
	Offset    uint64 `json:"offset"`
	Epoch     string `json:"epoch"`
	Recovered *bool  `json:"recovered"`
}

type member struct {
	room    string
	i       int
	started bool
	start   uint64 // the offset of the first joined: messages after it are due
	got     []recvMsg
	last    recvMsg // the last message had, for since
}

// RunRecovery runs the scenario until it is done or ctx ends.
func RunRecovery(ctx context.Context, cfg RecoveryConfig) (*RecoveryResult, error) {
	if len(cfg.URLs) == 0 || len(cfg.APIs) == 0 || cfg.Rooms <= 0 || cfg.RoomSize <= 0 || cfg.RoomRate <= 0 || cfg.Duration <= 0 {
		return nil, errors.New("bench: recovery needs URLs, APIs, rooms, room size, room rate and duration")
	}
	if cfg.Settle <= 0 {
		cfg.Settle = 3 * time.Second
	}
	res := &RecoveryResult{Rooms: cfg.Rooms, Members: cfg.Rooms * cfg.RoomSize}
	var sent, deliveries, drops, rejoins, recovered, notRecovered, dialErrs atomic.Uint64
	var dropping atomic.Bool
	dropping.Store(true)
	dialer := websocket.Dialer{HandshakeTimeout: 5 * time.Second}
	seq := atomic.Int64{}
	dial := func(ctx context.Context, k int) (*websocket.Conn, error) {
		u := cfg.URLs[k%len(cfg.URLs)]
		if cfg.JWTSecret != "" {
			tok, err := auth.Mint([]byte(cfg.JWTSecret), "HS256", fmt.Sprint("rec-", seq.Add(1)), time.Hour, "", time.Time{})
			if err != nil {
				return nil, err
			}
			u += "?token=" + url.QueryEscape(tok)
		}
		c, _, err := dialer.DialContext(ctx, u, nil)
		if err != nil {
			dialErrs.Add(1)
			return nil, err
		}
		if _, _, err := c.ReadMessage(); err != nil { // connected
			c.Close()
			return nil, err
		}
		return c, nil
	}
	t0 := time.Now()
	chatCtx, stopChat := context.WithTimeout(ctx, cfg.Duration)
	defer stopChat()
	memCtx, stopMembers := context.WithCancel(ctx)
	defer stopMembers()

	members := make([]*member, 0, res.Members)
	var wg sync.WaitGroup
	for r := range cfg.Rooms {
		room := fmt.Sprint("rec-", r)
		for i := range cfg.RoomSize {
			m := &member{room: room, i: r*cfg.RoomSize + i}
			members = append(members, m)
			wg.Add(1)
			go func() {
				defer wg.Done()
				for k := m.i; memCtx.Err() == nil; k++ {
					c, err := dial(memCtx, k)
					if err != nil {
						sleepCtx(memCtx, time.Duration(rand.IntN(200))*time.Millisecond)
						continue
					}
					join := map[string]any{"type": "join", "roomId": room, "userName": "m"}
					if m.started && m.last.Epoch != "" {
						join["since"] = map[string]any{"offset": m.last.Offset, "epoch": m.last.Epoch}
					}
					if m.started {
						rejoins.Add(1)
					}
					c.WriteJSON(join)
					var timer *time.Timer
					if cfg.DropEvery > 0 {
						d := time.Duration(rand.ExpFloat64() * float64(cfg.DropEvery))
						timer = time.AfterFunc(d, func() {
							if dropping.Load() {
								drops.Add(1)
								c.UnderlyingConn().Close() // abrupt, as a network blip
							}
						})
					}
					stop := context.AfterFunc(memCtx, func() { c.Close() })
					for {
						_, data, err := c.ReadMessage()
						if err != nil {
							break
						}
						var msg recvMsg
						if json.Unmarshal(data, &msg) != nil {
							continue
						}
						switch msg.Type {
						case "message":
							deliveries.Add(1)
							m.got = append(m.got, msg)
							m.last = msg
						case "joined":
							if !m.started {
								m.started, m.start = true, msg.Offset
								m.last = recvMsg{Offset: msg.Offset, Epoch: msg.Epoch}
							} else if msg.Recovered != nil && *msg.Recovered {
								recovered.Add(1)
							} else {
								notRecovered.Add(1)
							}
							if msg.Epoch != "" && (m.last.Epoch != msg.Epoch || msg.Offset > m.last.Offset) {
								m.last = recvMsg{Offset: msg.Offset, Epoch: msg.Epoch}
							}
						}
					}
					stop()
					if timer != nil {
						timer.Stop()
					}
					c.Close()
					sleepCtx(memCtx, time.Duration(rand.IntN(100))*time.Millisecond)
				}
			}()
		}
	}
	// Let every member join before the chat starts.
	sleepCtx(ctx, time.Duration(res.Members)*time.Millisecond+500*time.Millisecond)
	var swg sync.WaitGroup
	for r := range cfg.Rooms {
		room := fmt.Sprint("rec-", r)
		swg.Add(1)
		go func() {
			defer swg.Done()
			every := time.Duration(float64(time.Second) / cfg.RoomRate)
			n := 0
			for k := r; chatCtx.Err() == nil; k++ {
				c, err := dial(chatCtx, k)
				if err != nil {
					sleepCtx(chatCtx, 100*time.Millisecond)
					continue
				}
				c.WriteJSON(map[string]any{"type": "join", "roomId": room, "userName": "sender"})
				go func() { // drain
					for {
						if _, _, err := c.ReadMessage(); err != nil {
							return
						}
					}
				}()
				tick := time.NewTicker(every)
				for chatCtx.Err() == nil {
					select {
					case <-chatCtx.Done():
					case <-tick.C:
						n++
						if c.WriteJSON(map[string]any{"type": "chat", "roomId": room, "content": fmt.Sprintf("%s/%d", room, n)}) != nil {
							goto redial
						}
						sent.Add(1)
					}
				}
			redial:
				tick.Stop()
				c.Close()
			}
		}()
	}
	swg.Wait()
	dropping.Store(false)
	sleepCtx(ctx, cfg.Settle)
	stopMembers()
	wg.Wait()
	res.Seconds = time.Since(t0).Seconds()
	res.Sent, res.Deliveries, res.Drops, res.Rejoins = sent.Load(), deliveries.Load(), drops.Load(), rejoins.Load()
	res.Recovered, res.NotRecovered, res.DialErrors = recovered.Load(), notRecovered.Load(), dialErrs.Load()

	refs := make(map[string][]recvMsg)
	for r := range cfg.Rooms {
		room := fmt.Sprint("rec-", r)
		ref, err := roomHistory(ctx, cfg, room)
		if err != nil {
			return res, err
		}
		refs[room] = ref
		res.InHistory += len(ref)
	}
	for _, m := range members {
		ref := refs[m.room]
		seen := make(map[uint64]int)
		var prev uint64
		for _, g := range m.got {
			seen[g.Offset]++
			if seen[g.Offset] > 1 {
				res.Duplicated++
				continue
			}
			if g.Offset <= prev {
				res.OutOfOrder++
			}
			prev = g.Offset
		}
		for _, r := range ref {
			if r.Offset > m.start && seen[r.Offset] == 0 {
				res.Missing++
			}
		}
	}
	return res, nil
}

// roomHistory reads a room's whole history, oldest first, from the first API
// that answers.
func roomHistory(ctx context.Context, cfg RecoveryConfig, room string) ([]recvMsg, error) {
	var lastErr error
	for _, api := range cfg.APIs {
		var all []recvMsg
		before := uint64(0)
		for {
			u := fmt.Sprintf("%s/api/rooms/%s/history?limit=100", strings.TrimRight(api, "/"), url.PathEscape(room))
			if before > 0 {
				u += fmt.Sprint("&before=", before)
			}
			req, _ := http.NewRequestWithContext(ctx, "GET", u, nil)
			req.Header.Set("Authorization", "Bearer "+cfg.APIKey)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				lastErr = err
				break
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			var page struct {
				Messages []recvMsg `json:"messages"`
				More     bool      `json:"more"`
			}
			if resp.StatusCode != 200 || json.Unmarshal(body, &page) != nil {
				lastErr = fmt.Errorf("bench: %s: %d %s", u, resp.StatusCode, body)
				break
			}
			all = append(page.Messages, all...)
			if !page.More || len(page.Messages) == 0 {
				slices.SortFunc(all, func(a, b recvMsg) int { return cmp.Compare(a.Offset, b.Offset) })
				return all, nil
			}
			before = page.Messages[0].Offset
		}
	}
	return nil, lastErr
}

func sleepCtx(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}
