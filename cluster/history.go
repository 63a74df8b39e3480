package cluster

// The rooms' history in a cluster lives in one JetStream stream, HISTORY_<PREFIX>,
// on the subjects PREFIX.hist.<room id in base64url>. A chat message is
// published to the stream (by the node's history publisher goroutine) and not
// delivered by its origin: every node, the origin included, delivers the
// stream's messages to its members in the stream's order, from one ordered
// consumer per node over all the rooms. A message's offset is its stream
// sequence: increasing within a room, with gaps (the other rooms' messages),
// the same on every node. The epoch names the stream: its creation time, so a
// stream deleted and made again is a new epoch.
//
// Recovery asks the stream directly (JetStream's direct get): a client's
// offset is complete if the stream still has that very message of the room
// (the stream evicts a subject's messages oldest first, so all later ones are
// there too), or if the room has had no message since. Anything else is
// answered recovered: false, with the room's latest messages.

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/valyala/bytebufferpool"
)

// HistoryOptions turns on the rooms' history in a JetStream stream.
type HistoryOptions struct {
	// Size bounds a room's messages in the stream (max_msgs_per_subject). If
	// zero, 100.
	Size int
	// TTL bounds a message's age (max_age). If zero, an hour.
	TTL time.Duration
	// Memory bounds the stream's bytes (max_bytes); past it the oldest
	// messages go first. If zero, 64 MiB.
	Memory int64
	// Replicas is the stream's replica count on a JetStream cluster. If zero, 1.
	Replicas int
	// Storage is "file" (the default) or "memory".
	Storage string
}

// StreamDeliverer receives the history stream's messages, in the stream's
// order, on the node's consumer goroutine. payload is the message without
// its offset and epoch; seq is its stream sequence.
type StreamDeliverer interface {
	DeliverStream(roomID string, seq uint64, epoch string, payload []byte)
	// DeliverLive delivers a message that could not be put in the stream,
	// to this node's members only (the origin also publishes it live).
	DeliverLive(roomID string, payload []byte)
}

// StreamMsg is a room message read from the history stream: its sequence,
// and its payload without offset and epoch. An alias of an unnamed type, so
// package chat can name the same type without importing this one.
type StreamMsg = struct {
	Seq     uint64
	Payload []byte
}

// ErrNoHistory is returned by the history calls while the stream is not
// reachable.
var ErrNoHistory = errors.New("cluster: history stream not reachable")

// hist is the node's side of the history stream.
type hist struct {
	opts       HistoryOptions
	name       string // the stream
	subjPrefix string // PREFIX.hist.
	js         jetstream.JetStream
	sd         StreamDeliverer

	ready  atomic.Bool            // the stream and the consumer are set up
	epoch  atomic.Pointer[string] // set when ready
	stream atomic.Pointer[jetstream.Stream]
	pos    atomic.Uint64 // the last stream sequence the consumer delivered
	out    chan histOut  // loops → the history publisher
	sem    chan struct{} // bounds the recoveries and pages in flight

	appended, liveOnly, recoverFailed atomic.Uint64

	// A handoff (handoff.go): ctl is run by the history goroutine, which
	// owns cc. dmu is held by the consumer's callback while it delivers:
	// paused stops it, and gen tells a callback of a consumer since replaced.
	ctl    chan func()
	cc     jetstream.ConsumeContext
	posSet atomic.Bool // pos came from the predecessor: start after it
	dmu    sync.Mutex
	paused bool   // guarded by dmu
	gen    uint64 // guarded by dmu
}

type histOut struct {
	room string
	buf  *bytebufferpool.ByteBuffer
}

func (n *Node) histSubject(roomID string) string {
	return n.h.subjPrefix + base64.RawURLEncoding.EncodeToString([]byte(roomID))
}

func (n *Node) histRoom(subject string) (string, bool) {
	tok, ok := strings.CutPrefix(subject, n.h.subjPrefix)
	if !ok {
		return "", false
	}
	b, err := base64.RawURLEncoding.DecodeString(tok)
	return string(b), err == nil
}

func (n *Node) newHist(sd StreamDeliverer) {
	o := n.opts.History
	if o.Size <= 0 {
		o.Size = 100
	}
	if o.TTL <= 0 {
		o.TTL = time.Hour
	}
	if o.Memory <= 0 {
		o.Memory = 64 << 20
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	prefix := cmpOr(n.opts.Prefix, DefaultPrefix)
	n.h = &hist{
		opts:       *o,
		name:       "HISTORY_" + strings.ToUpper(strings.ReplaceAll(prefix, ".", "_")),
		subjPrefix: prefix + ".hist.",
		sd:         sd,
		out:        make(chan histOut, cmpOr(n.opts.OutboundQueue, DefaultOutboundQueue)),
		sem:        make(chan struct{}, 64),
		ctl:        make(chan func()),
	}
}

func cmpOr[T comparable](a, b T) T {
	var zero T
	if a != zero {
		return a
	}
	return b
}

// HistoryOn reports whether the history stream is reachable: messages are
// numbered by it, and recovery asks it.
func (n *Node) HistoryOn() bool { return n.h != nil && n.h.ready.Load() }

// HistoryEpoch is the stream's epoch, "" until it is reachable.
func (n *Node) HistoryEpoch() string {
	if n.h == nil {
		return ""
	}
	if e := n.h.epoch.Load(); e != nil {
		return *e
	}
	return ""
}

// HistoryPosition is the last stream sequence this node delivered, or is
// delivering: every message of a room before it, and at it unless it is that
// room's message being delivered, has been handed to the members here.
func (n *Node) HistoryPosition() uint64 { return n.h.pos.Load() }

// HistorySize is the most messages a room keeps in the stream.
func (n *Node) HistorySize() int { return n.h.opts.Size }

// Go runs f on a goroutine of the node, which Shutdown and Close wait for; it
// reports false once the node is stopping.
func (n *Node) Go(f func()) bool { return n.bg.Go(f) }

// Append queues payload, a complete message without offset, for room id's
// history. It reports false if it cannot (the stream is unreachable, the
// queue is full): the caller then delivers it live only.
func (n *Node) Append(roomID string, payload []byte) bool {
	h := n.h
	if h == nil || !h.ready.Load() || n.closing.Load() || !n.connected.Load() {
		return false
	}
	b := bytebufferpool.Get()
	b.B = append(b.B[:0], payload...)
	select {
	case h.out <- histOut{room: roomID, buf: b}:
		return true
	default:
		bytebufferpool.Put(b)
		return false
	}
}

// liveOnly delivers a message the stream did not take: to this node's
// members, and live to the other nodes, as without history.
func (n *Node) liveOnly(roomID string, payload []byte) {
	n.h.liveOnly.Add(1)
	n.h.sd.DeliverLive(roomID, payload)
	n.Publish(roomID, payload)
}

// histRun sets the stream up (retrying until it can), runs the consumer, and
// publishes the queued messages until the node stops.
func (n *Node) histRun() {
	h := n.h
	defer func() {
		if h.cc != nil {
			h.cc.Stop()
		}
	}()
	retry := time.NewTicker(n.opts.ReconnectWait)
	defer retry.Stop()
	for tries := 0; !h.ready.Load(); tries++ {
		err := n.histSetup()
		if err == nil {
			break
		}
		if tries == 0 {
			n.log.Warn("cluster: history stream not reachable; chat is live only until it is", "err", err)
		} else {
			n.log.Debug("cluster: history stream still not reachable", "err", err)
		}
		// Whatever was queued meanwhile goes live.
		n.histLiveAll()
		select {
		case <-n.bg.Quit():
			return
		case f := <-h.ctl:
			f()
		case <-retry.C:
		}
	}
	subjects := make(map[string]string)
	for {
		select {
		case <-n.bg.Quit():
			return
		case f := <-h.ctl:
			f()
		case m := <-h.out:
			n.histPublish(subjects, m)
		}
	}
}

// histLiveAll delivers live what is queued for the stream while it is not
// reachable.
func (n *Node) histLiveAll() {
	for {
		select {
		case m := <-n.h.out:
			n.liveOnly(m.room, m.buf.B)
			bytebufferpool.Put(m.buf)
		default:
			return
		}
	}
}

// histPublish hands a queued message to the stream.
func (n *Node) histPublish(subjects map[string]string, m histOut) {
	h := n.h
	subj, ok := subjects[m.room]
	if !ok {
		if len(subjects) >= 4096 {
			clear(subjects)
		}
		subj = n.histSubject(m.room)
		subjects[m.room] = subj
	}
	// The payload is copied into the NATS message: the buffer goes
	// back now; a failure's handler gets the message's own copy.
	data := append([]byte(nil), m.buf.B...)
	bytebufferpool.Put(m.buf)
	if _, err := h.js.PublishMsgAsync(&nats.Msg{Subject: subj, Data: data}); err != nil {
		n.liveOnly(m.room, data)
		return
	}
	h.appended.Add(1)
}

// histSetup makes or updates the stream and, unless the node is a successor
// waiting to take over, starts the ordered consumer from the stream's end
// (or after the predecessor's position).
func (n *Node) histSetup() error {
	h := n.h
	js, err := jetstream.New(n.nc,
		jetstream.WithPublishAsyncMaxPending(4096),
		jetstream.WithPublishAsyncErrHandler(func(_ jetstream.JetStream, m *nats.Msg, err error) {
			// Not stored: it reaches the members live, not in order with the
			// stream's, and is not in history.
			if id, ok := n.histRoom(m.Subject); ok {
				n.liveOnly(id, m.Data)
			}
		}))
	if err != nil {
		return err
	}
	h.js = js
	storage := jetstream.FileStorage
	if h.opts.Storage == "memory" {
		storage = jetstream.MemoryStorage
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := js.CreateOrUpdateStream(ctx, jetstream.StreamConfig{
		Name:              h.name,
		Subjects:          []string{h.subjPrefix + ">"},
		Retention:         jetstream.LimitsPolicy,
		Discard:           jetstream.DiscardOld,
		MaxMsgsPerSubject: int64(h.opts.Size),
		MaxAge:            h.opts.TTL,
		MaxBytes:          h.opts.Memory,
		Storage:           storage,
		Replicas:          h.opts.Replicas,
		AllowDirect:       true,
	})
	if err != nil {
		return err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return err
	}
	epoch := strconv.FormatInt(info.Created.UnixNano(), 36)
	h.epoch.Store(&epoch)
	h.stream.Store(&st)
	if !h.posSet.Load() {
		h.pos.Store(info.State.LastSeq)
	}
	if !n.standby.Load() {
		if err := n.histConsume(ctx); err != nil {
			return err
		}
	}
	h.ready.Store(true)
	n.log.Info("cluster: history stream ready", "stream", h.name, "epoch", epoch, "last_seq", info.State.LastSeq,
		"from", h.pos.Load()+1)
	return nil
}

// histConsume starts an ordered consumer of the stream after the position,
// replacing any other. Run by the history goroutine.
func (n *Node) histConsume(ctx context.Context) error {
	h := n.h
	if h.cc != nil {
		h.cc.Stop()
		h.cc = nil
	}
	h.dmu.Lock()
	h.gen++
	gen := h.gen
	h.dmu.Unlock()
	epoch := *h.epoch.Load()
	st := *h.stream.Load()
	cons, err := st.OrderedConsumer(ctx, jetstream.OrderedConsumerConfig{
		FilterSubjects: []string{h.subjPrefix + ">"},
		DeliverPolicy:  jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:    h.pos.Load() + 1,
	})
	if err != nil {
		return err
	}
	cc, err := cons.Consume(func(m jetstream.Msg) {
		md, err := m.Metadata()
		if err != nil {
			return
		}
		h.dmu.Lock()
		defer h.dmu.Unlock()
		if h.paused || gen != h.gen {
			return // a handoff's: the successor, or the next consumer, delivers it
		}
		// The position moves first: a room's cursor made from it during the
		// delivery is of another room, whose messages up to it are all
		// delivered.
		h.pos.Store(md.Sequence.Stream)
		if id, ok := n.histRoom(m.Subject()); ok {
			h.sd.DeliverStream(id, md.Sequence.Stream, epoch, m.Data())
		}
	})
	if err != nil {
		return err
	}
	h.cc = cc
	return nil
}

// histPause stops the consumer's deliveries, publishes what is queued for
// the stream and waits until the stream has taken it, and returns the last
// sequence delivered here.
func (n *Node) histPause(ctx context.Context) (uint64, error) {
	h := n.h
	var err error
	rerr := n.run(h.ctl, func() {
		h.dmu.Lock()
		h.paused = true
		h.dmu.Unlock()
		if !h.ready.Load() {
			n.histLiveAll()
			return
		}
		subjects := make(map[string]string)
		for drained := false; !drained; {
			select {
			case m := <-h.out:
				n.histPublish(subjects, m)
			default:
				drained = true
			}
		}
		select {
		case <-h.js.PublishAsyncComplete():
		case <-ctx.Done():
			err = errors.New("cluster: pause: the history stream did not take the queued messages")
		}
	})
	if rerr != nil {
		return 0, rerr
	}
	return h.pos.Load(), err
}

// histResume undoes histPause: a new consumer goes on after the position.
func (n *Node) histResume() {
	h := n.h
	n.run(h.ctl, func() {
		h.dmu.Lock()
		was := h.paused
		h.paused = false
		h.dmu.Unlock()
		if was && h.ready.Load() {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := n.histConsume(ctx); err != nil {
				n.log.Error("cluster: history consumer not restarted after a failed handoff; rooms get no stream messages here", "err", err)
			}
		}
	})
}

// histActivate starts a successor's consumer after its predecessor's
// position (if the stream is not reachable yet, setting it up will).
func (n *Node) histActivate() {
	h := n.h
	n.run(h.ctl, func() {
		if h.ready.Load() && h.cc == nil {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			if err := n.histConsume(ctx); err != nil {
				n.log.Warn("cluster: history consumer not started", "err", err)
			}
		}
	})
}

// direct sends a direct-get request and gathers the messages of its answer:
// one, or a batch ended by an end-of-batch status.
func (n *Node) direct(ctx context.Context, req map[string]any) ([]*nats.Msg, error) {
	data, _ := json.Marshal(req)
	inbox := nats.NewInbox()
	sub, err := n.nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer sub.Unsubscribe()
	if err := n.nc.PublishRequest("$JS.API.DIRECT.GET."+n.h.name, inbox, data); err != nil {
		return nil, err
	}
	var out []*nats.Msg
	for {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			return nil, err
		}
		switch m.Header.Get("Status") {
		case "":
			out = append(out, m)
		case "204", "404":
			return out, nil // end of the batch, or nothing matched
		default:
			return nil, errors.New("cluster: direct get: " + m.Header.Get("Status") + " " + m.Header.Get("Description"))
		}
	}
}

func seqOf(m *nats.Msg) uint64 {
	s, _ := strconv.ParseUint(m.Header.Get("Nats-Sequence"), 10, 64)
	return s
}

// acquire bounds the history calls in flight; it reports false if ctx ends
// first.
func (n *Node) acquire(ctx context.Context) bool {
	select {
	case n.h.sem <- struct{}{}:
		return true
	case <-ctx.Done():
		return false
	}
}

func (n *Node) release() { <-n.h.sem }

// ReadAfter returns room id's messages after offset after, up to max+1 of
// them, and the stream's last sequence read before them: every message of the
// room up to upTo is in msgs or was gone from the stream. complete reports
// whether the stream still holds the message at after (so nothing after it
// was evicted) or nothing of the room follows after. It blocks for a few
// broker round trips.
func (n *Node) ReadAfter(ctx context.Context, id string, after uint64, max int) (msgs []StreamMsg, upTo uint64, complete bool, err error) {
	if !n.HistoryOn() {
		return nil, 0, false, ErrNoHistory
	}
	if !n.acquire(ctx) {
		return nil, 0, false, ctx.Err()
	}
	defer n.release()
	st := *n.h.stream.Load()
	info, err := st.Info(ctx)
	if err != nil {
		return nil, 0, false, err
	}
	upTo = info.State.LastSeq
	subj := n.histSubject(id)
	start := after
	if start == 0 {
		start = 1
	}
	ms, err := n.direct(ctx, map[string]any{"next_by_subj": subj, "seq": start, "batch": max + 2})
	if err != nil {
		return nil, 0, false, err
	}
	complete = after == 0 && info.State.FirstSeq <= 1 && info.State.NumDeleted == 0
	for _, m := range ms {
		s := seqOf(m)
		switch {
		case s == after:
			complete = true
		case s > after && s <= upTo:
			msgs = append(msgs, StreamMsg{Seq: s, Payload: m.Data})
		}
	}
	if len(msgs) == 0 {
		complete = true // nothing of the room after it
	}
	return msgs, upTo, complete, nil
}

// ReadBefore returns up to limit of room id's messages before offset before
// (0: the newest), oldest first, whether older ones remain, and the room's
// newest offset. Each message is a broker round trip.
func (n *Node) ReadBefore(ctx context.Context, id string, before uint64, limit int) (msgs []StreamMsg, latest uint64, more bool, err error) {
	if !n.HistoryOn() {
		return nil, 0, false, ErrNoHistory
	}
	if !n.acquire(ctx) {
		return nil, 0, false, ctx.Err()
	}
	defer n.release()
	subj := n.histSubject(id)
	last, err := n.direct(ctx, map[string]any{"multi_last": []string{subj}, "batch": 1})
	if err != nil {
		return nil, 0, false, err
	}
	if len(last) == 0 {
		return nil, 0, false, nil
	}
	latest = seqOf(last[0])
	cur := latest
	if before > 0 {
		if before <= 1 {
			return nil, latest, false, nil
		}
		cur = min(cur, before-1)
	}
	for len(msgs) <= limit && cur > 0 {
		ms, err := n.direct(ctx, map[string]any{"multi_last": []string{subj}, "up_to_seq": cur, "batch": 1})
		if err != nil {
			return nil, 0, false, err
		}
		if len(ms) == 0 {
			break
		}
		s := seqOf(ms[0])
		msgs = append(msgs, StreamMsg{Seq: s, Payload: ms[0].Data})
		cur = s - 1
	}
	if len(msgs) > limit {
		msgs, more = msgs[:limit], true
	}
	for i, j := 0, len(msgs)-1; i < j; i, j = i+1, j-1 {
		msgs[i], msgs[j] = msgs[j], msgs[i]
	}
	return msgs, latest, more, nil
}
