package chat

import (
	"context"
	"net/http"
	"strconv"
	"time"

	"github.com/valyala/bytebufferpool"
	"github.com/valyala/fastjson"

	"github.com/throng-ws/throng/protocol"
	"github.com/throng-ws/throng/server"
)

// history answers a history request: a page of a room's messages, oldest
// first, before an offset. Only members may page through a room.
func (h *Handler) history(cc *chatConn, v *fastjson.Value) {
	c := cc.c
	id, ok := h.roomID(c, v)
	if !ok {
		return
	}
	q, field := readPageQuery(v)
	if field != "" {
		h.sendError(c, protocol.CodeInvalidMessage, protocol.TextInvalidMessage, field)
		return
	}
	if _, m := cc.member(id); m == nil {
		h.sendError(c, protocol.CodeNotInRoom, protocol.TextNotInRoom, "")
		return
	}
	roomID := string(id)
	answer := func() {
		p, code := h.page(roomID, q)
		// On the connection's loop: the answer is written in order with the
		// room's messages.
		h.post(cc, func() {
			if code != "" {
				h.sendPageError(c, code)
				return
			}
			h.counts.pages.Add(1)
			b := bytebufferpool.Get()
			b.B = appendPage(b.B, roomID, p)
			c.WriteText(b.B)
			bytebufferpool.Put(b)
		})
	}
	if hc := h.clusterHistory(); hc != nil {
		// The stream is a few broker round trips away: never on a loop.
		if !hc.Go(answer) {
			h.sendPageError(c, protocol.CodeUnavailable)
		}
		return
	}
	p, code := h.page(roomID, q)
	if code != "" {
		h.sendPageError(c, code)
		return
	}
	h.counts.pages.Add(1)
	b := bytebufferpool.Get()
	b.B = appendPage(b.B, roomID, p)
	c.WriteText(b.B)
	bytebufferpool.Put(b)
}

func (h *Handler) sendPageError(c *server.Conn, code string) {
	text := protocol.TextNoHistory
	if code == protocol.CodeUnknownEpoch {
		text = protocol.TextUnknownEpoch
	}
	b := bytebufferpool.Get()
	b.B = protocol.AppendError(b.B, code, text, nil, "")
	c.WriteText(b.B)
	bytebufferpool.Put(b)
}

// pageQuery is a history request's fields.
type pageQuery struct {
	before uint64 // 0: the newest
	limit  int
	epoch  string // "": any
}

// readPageQuery reads a history request's before, limit and epoch; field names
// the first bad one.
func readPageQuery(v *fastjson.Value) (q pageQuery, field string) {
	q.limit = protocol.DefaultHistoryLimit
	if f := v.Get("before"); f != nil && f.Type() != fastjson.TypeNull {
		n, err := f.Uint64()
		if err != nil {
			return q, "before"
		}
		q.before = n
	}
	if f := v.Get("limit"); f != nil && f.Type() != fastjson.TypeNull {
		n, err := f.Int()
		if err != nil || n < 1 || n > protocol.MaxHistoryLimit {
			return q, "limit"
		}
		q.limit = n
	}
	if f := v.Get("epoch"); f != nil && f.Type() != fastjson.TypeNull {
		if f.Type() != fastjson.TypeString || !protocol.ValidEpoch(f.GetStringBytes()) {
			return q, "epoch"
		}
		q.epoch = string(f.GetStringBytes())
	}
	return q, ""
}

// page is one page of a room's history.
type page struct {
	epoch  string
	latest uint64
	msgs   [][]byte // complete message payloads, oldest first
	more   bool
}

// page reads a page of room id's history, from this node's store or the
// cluster's. code is an error code when it cannot: unavailable (history off or
// unreachable) or unknown_epoch.
func (h *Handler) page(id string, q pageQuery) (page, string) {
	var p page
	switch {
	case h.Cluster != nil && h.History == nil:
		hc := h.clusterHistory()
		if hc == nil {
			return p, protocol.CodeUnavailable
		}
		p.epoch = hc.HistoryEpoch()
		if q.epoch != "" && q.epoch != p.epoch {
			return p, protocol.CodeUnknownEpoch
		}
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		msgs, latest, more, err := hc.ReadBefore(ctx, id, q.before, q.limit)
		if err != nil {
			return p, protocol.CodeUnavailable
		}
		p.latest, p.more = latest, more
		for _, sm := range msgs {
			if len(sm.Payload) >= 2 {
				p.msgs = append(p.msgs, appendPosition(append([]byte(nil), sm.Payload[:len(sm.Payload)-1]...), sm.Seq, p.epoch))
			}
		}
	case h.History != nil:
		var ok bool
		p.epoch, p.latest, p.msgs, p.more, ok = h.History.Page(id, q.before, q.limit)
		if !ok {
			// No log: the room has had no message or member for the TTL.
			// Asking makes one, so its epoch is the one its history will have.
			l := h.History.Lock(id)
			p.epoch, p.latest = l.Epoch(), l.Latest()
			l.Unlock()
		}
	default:
		return p, protocol.CodeUnavailable
	}
	if q.epoch != "" && q.epoch != p.epoch {
		return p, protocol.CodeUnknownEpoch
	}
	return p, ""
}

// appendPage appends a history-page message.
func appendPage(b []byte, roomID string, p page) []byte {
	b = append(b, `{"type":"history-page","roomId":`...)
	b = protocol.AppendJSONString(b, roomID)
	b = append(b, `,"epoch":`...)
	b = protocol.AppendJSONString(b, p.epoch)
	b = append(b, `,"offset":`...)
	b = strconv.AppendUint(b, p.latest, 10)
	b = append(b, `,"messages":[`...)
	for i, m := range p.msgs {
		if i > 0 {
			b = append(b, ',')
		}
		b = append(b, m...)
	}
	b = append(b, `],"more":`...)
	b = strconv.AppendBool(b, p.more)
	return append(b, '}')
}

// getHistory is GET /api/rooms/{id}/history?before=&limit=&epoch=: the same
// page as the history request, as JSON of the same shape.
func (a *API) getHistory(w http.ResponseWriter, r *http.Request) {
	id, ok := a.roomID(w, r)
	if !ok {
		return
	}
	q := pageQuery{limit: protocol.DefaultHistoryLimit}
	qs := r.URL.Query()
	if s := qs.Get("before"); s != "" {
		n, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			writeAPIError(w, http.StatusBadRequest, protocol.CodeInvalidMessage, protocol.TextInvalidMessage+": before")
			return
		}
		q.before = n
	}
	if s := qs.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > protocol.MaxHistoryLimit {
			writeAPIError(w, http.StatusBadRequest, "invalid_limit", "limit must be 1 to "+strconv.Itoa(protocol.MaxHistoryLimit))
			return
		}
		q.limit = n
	}
	if s := qs.Get("epoch"); s != "" {
		if !protocol.ValidEpoch(s) {
			writeAPIError(w, http.StatusBadRequest, protocol.CodeInvalidMessage, protocol.TextInvalidMessage+": epoch")
			return
		}
		q.epoch = s
	}
	p, code := a.Chat.page(id, q)
	switch code {
	case "":
	case protocol.CodeUnknownEpoch:
		writeAPIError(w, http.StatusConflict, code, protocol.TextUnknownEpoch)
		return
	default:
		writeAPIError(w, http.StatusServiceUnavailable, code, protocol.TextNoHistory)
		return
	}
	b := bytebufferpool.Get()
	b.B = appendPage(b.B, id, p)
	b.B = append(b.B, '\n')
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(http.StatusOK)
	w.Write(b.B)
	bytebufferpool.Put(b)
}
