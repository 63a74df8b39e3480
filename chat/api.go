package chat

import (
	"cmp"
	"context"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"math"
	"net"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"golang.org/x/time/rate"

	"github.com/throng-ws/throng/httplimit"
	"github.com/throng-ws/throng/protocol"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

// API is the HTTP API for backends, on the HTTP listener:
//
//	GET  /api/rooms?after=ID&limit=N   rooms with member counts, in id order
//	GET  /api/rooms/{id}               a room's members
//	POST /api/rooms/{id}/messages      {"content":C[,"userName":N]} to every member
//	GET  /api/rooms/{id}/history?before=O&limit=N   a page of the room's history
//	GET  /api/stats                    the Overview: connections, memory, counters
//	GET  /api/dashboard?since=SEQ      the operator's page's data (Dashboard)
//	POST   /api/users/{user}/disconnect         {"code":C,"reason":R}: close the user's connections
//	DELETE /api/rooms/{id}/members/{user}       {"reason":R}: take the user out of the room
//	DELETE /api/rooms/{id}                      {"reason":R}: take everyone out of the room
//
// Every request carries the key as a bearer token. The last three are
// operators' actions: in a cluster they act on every node, and each is logged
// on every node with the caller's key id.
type API struct {
	// Key authenticates requests. It must not be empty.
	Key string
	// Chat publishes messages.
	Chat *Handler
	// Rooms is the chat's room table.
	Rooms *room.Table
	// Server is the transport whose Overview GET /api/stats returns, with the
	// chat's and rooms' figures. If nil, that route is not registered.
	Server *server.Server
	// Now timestamps published messages. If nil, time.Now is used.
	Now func() time.Time
	// Logger receives a line for every operator's action, with the caller's
	// key id. If nil, actions are not logged.
	Logger *slog.Logger
	// Dashboard, if set, is served as GET /api/dashboard for the operator's
	// page; its owner starts and closes it.
	Dashboard *Dashboard
	// KeyFailureBurst is how many wrong keys one client address may present
	// at once; after that it gets one more a second, and 429 with
	// Retry-After until then, whatever key it sends. The dashboard's sign-in
	// form makes the key something a person types, so guessing is throttled.
	// If zero, DefaultKeyFailureBurst; if negative, wrong keys are not
	// throttled.
	KeyFailureBurst int

	failMu sync.Mutex
	fails  map[string]*rate.Limiter // wrong keys by client address; guarded by failMu
}

// The wrong-key throttle (API.KeyFailureBurst).
const (
	DefaultKeyFailureBurst = 20
	keyFailureRate         = 1.0
	// maxFailing bounds the addresses tracked; when the table is full of
	// addresses still throttled, new ones are throttled too.
	maxFailing = 4096
)

// Paging limits for GET /api/rooms.
const (
	DefaultRoomsPage = 100
	MaxRoomsPage     = 1000
)

// Register adds the API's routes to mux.
func (a *API) Register(mux *http.ServeMux) error {
	if a.Key == "" {
		return errors.New("chat: API key is empty")
	}
	mux.Handle("GET /api/rooms", a.authed(a.listRooms))
	mux.Handle("GET /api/rooms/{id}", a.authed(a.getRoom))
	mux.Handle("POST /api/rooms/{id}/messages", a.authed(a.publish))
	mux.Handle("DELETE /api/rooms/{id}/members/{user}", a.authed(a.removeMember))
	mux.Handle("DELETE /api/rooms/{id}", a.authed(a.closeRoom))
	mux.Handle("GET /api/rooms/{id}/history", a.authed(a.getHistory))
	if a.Server != nil {
		mux.Handle("GET /api/stats", a.authed(a.stats))
		mux.Handle("POST /api/users/{user}/disconnect", a.authed(a.disconnect))
	}
	if a.Dashboard != nil {
		mux.Handle("GET /api/dashboard", a.authed(a.Dashboard.serve))
	}
	return nil
}

func (a *API) stats(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.overview())
}

// writeAPIError answers with the HTTP listener's one error shape
// (httplimit.ErrorBody).
func writeAPIError(w http.ResponseWriter, status int, code, msg string) {
	httplimit.WriteError(w, status, code, msg)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (a *API) authed(h http.HandlerFunc) http.Handler {
	want := []byte(a.Key)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ip, _, err := net.SplitHostPort(r.RemoteAddr)
		if err != nil {
			ip = r.RemoteAddr
		}
		if wait := a.throttled(ip, a.now()); wait > 0 {
			w.Header().Set("Retry-After", strconv.Itoa(int(math.Ceil(wait.Seconds()))))
			writeAPIError(w, http.StatusTooManyRequests, "rate_limited", "too many wrong keys from this address; try again later")
			return
		}
		// The scheme name is case-insensitive (RFC 9110 section 11.1), as the
		// WebSocket handshake already treats it.
		scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare([]byte(got), want) != 1 {
			if r.Header.Get("Authorization") != "" { // a key that was tried
				a.failed(ip, a.now())
			}
			w.Header().Set("WWW-Authenticate", `Bearer realm="throng-api"`)
			writeAPIError(w, http.StatusUnauthorized, "unauthorized", "a valid API key is required as a bearer token")
			return
		}
		h(w, r)
	})
}

// throttled reports how long ip must wait before its key is checked again;
// 0 if it need not.
func (a *API) throttled(ip string, now time.Time) time.Duration {
	if a.KeyFailureBurst < 0 {
		return 0
	}
	a.failMu.Lock()
	defer a.failMu.Unlock()
	lim := a.fails[ip]
	if lim == nil {
		if len(a.fails) >= maxFailing {
			a.pruneLocked(now)
		}
		if len(a.fails) >= maxFailing {
			return time.Second
		}
		return 0
	}
	if lim.TokensAt(now) >= 1 {
		return 0
	}
	res := lim.ReserveN(now, 1)
	d := res.DelayFrom(now)
	res.CancelAt(now)
	return max(d, time.Millisecond)
}

// failed takes one wrong key from ip's allowance.
func (a *API) failed(ip string, now time.Time) {
	if a.KeyFailureBurst < 0 {
		return
	}
	a.failMu.Lock()
	defer a.failMu.Unlock()
	if a.fails == nil {
		a.fails = make(map[string]*rate.Limiter)
	}
	lim := a.fails[ip]
	if lim == nil {
		if len(a.fails) >= maxFailing {
			a.pruneLocked(now)
		}
		if len(a.fails) >= maxFailing {
			return
		}
		lim = rate.NewLimiter(keyFailureRate, a.failureBurst())
		a.fails[ip] = lim
	}
	lim.AllowN(now, 1)
}

func (a *API) failureBurst() int { return cmp.Or(a.KeyFailureBurst, DefaultKeyFailureBurst) }

// pruneLocked forgets the addresses whose allowance is whole again: they are
// no different from addresses never seen.
func (a *API) pruneLocked(now time.Time) {
	for k, l := range a.fails {
		if l.TokensAt(now) >= float64(a.failureBurst()) {
			delete(a.fails, k)
		}
	}
}

func (a *API) listRooms(w http.ResponseWriter, r *http.Request) {
	limit := DefaultRoomsPage
	if s := r.URL.Query().Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > MaxRoomsPage {
			writeAPIError(w, http.StatusBadRequest, "invalid_limit", "limit must be 1 to "+strconv.Itoa(MaxRoomsPage))
			return
		}
		limit = n
	}
	after := r.URL.Query().Get("after")
	var rooms []room.Info
	if cl := a.cluster(); cl != nil {
		rooms = mergeRooms(a.Rooms.List(after, 0), cl.RemoteRooms(after), limit+1)
	} else {
		rooms = a.Rooms.List(after, limit+1)
	}
	resp := struct {
		Rooms []room.Info `json:"rooms"`
		Next  string      `json:"next,omitempty"`
	}{Rooms: rooms}
	if len(rooms) > limit {
		resp.Rooms = rooms[:limit]
		resp.Next = rooms[limit-1].ID
	}
	if resp.Rooms == nil {
		resp.Rooms = []room.Info{}
	}
	writeJSON(w, http.StatusOK, resp)
}

func (a *API) roomID(w http.ResponseWriter, r *http.Request) (string, bool) {
	id := r.PathValue("id")
	if !protocol.ValidRoomID(id) {
		writeAPIError(w, http.StatusBadRequest, "invalid_room", "room id must be 1 to "+strconv.Itoa(protocol.MaxRoomID)+" bytes of printable UTF-8")
		return "", false
	}
	return id, true
}

func (a *API) getRoom(w http.ResponseWriter, r *http.Request) {
	id, ok := a.roomID(w, r)
	if !ok {
		return
	}
	members, ok := a.Rooms.Members(id)
	var partial bool
	if cl := a.cluster(); cl != nil && cl.Remote(id) > 0 {
		ctx, cancel := context.WithTimeout(r.Context(), ClusterMembersTimeout)
		remote, p, err := cl.RemoteMembers(ctx, id)
		cancel()
		members = append(members, remote...)
		ok = ok || len(remote) > 0
		partial = p || err != nil
	}
	if !ok && !partial {
		writeAPIError(w, http.StatusNotFound, "not_found", "no such room")
		return
	}
	if members == nil {
		members = []room.MemberInfo{}
	}
	writeJSON(w, http.StatusOK, struct {
		ID      string            `json:"id"`
		Count   int               `json:"count"`
		Members []room.MemberInfo `json:"members"`
		// Partial: a node that has members in the room did not answer in
		// time, and its members are missing.
		Partial bool `json:"partial,omitempty"`
	}{id, len(members), members, partial})
}

// ClusterMembersTimeout bounds how long GET /api/rooms/{id} waits for the
// other nodes of a cluster to list their members.
const ClusterMembersTimeout = 2 * time.Second

func (a *API) cluster() Cluster {
	if a.Chat == nil {
		return nil
	}
	return a.Chat.Cluster
}

// mergeRooms adds the other nodes' rooms to this node's, both after the same
// cursor, and returns the first limit in id order.
func mergeRooms(local, remote []room.Info, limit int) []room.Info {
	idx := make(map[string]int, len(local))
	for i, ri := range local {
		idx[ri.ID] = i
	}
	for _, ri := range remote {
		if i, ok := idx[ri.ID]; ok {
			local[i].Members += ri.Members
			continue
		}
		idx[ri.ID] = len(local)
		local = append(local, ri)
	}
	slices.SortFunc(local, func(a, b room.Info) int { return strings.Compare(a.ID, b.ID) })
	if len(local) > limit {
		local = local[:limit]
	}
	return local
}

func (a *API) now() time.Time {
	if a.Now != nil {
		return a.Now()
	}
	return time.Now()
}

// ServerUserID is the userId of messages published through the API.
const ServerUserID = "server"

func (a *API) publish(w http.ResponseWriter, r *http.Request) {
	id, ok := a.roomID(w, r)
	if !ok {
		return
	}
	var body struct {
		Content  *string `json:"content"`
		UserName *string `json:"userName"`
	}
	dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
	if err := dec.Decode(&body); err != nil {
		writeAPIError(w, http.StatusBadRequest, protocol.CodeInvalidJSON, protocol.TextInvalidJSON)
		return
	}
	maxContent := cmp.Or(a.Chat.MaxContent, protocol.DefaultMaxContent)
	if body.Content == nil || !utf8.ValidString(*body.Content) {
		writeAPIError(w, http.StatusBadRequest, protocol.CodeInvalidMessage, protocol.TextInvalidMessage+": content")
		return
	}
	if n := utf8.RuneCountInString(*body.Content); n == 0 || n > maxContent {
		writeAPIError(w, http.StatusBadRequest, protocol.CodeInvalidMessage, protocol.TextInvalidMessage+": content")
		return
	}
	name := ServerUserID
	if body.UserName != nil {
		name = *body.UserName
		if !protocol.ValidUserName(name) {
			writeAPIError(w, http.StatusBadRequest, protocol.CodeInvalidMessage, protocol.TextInvalidMessage+": userName")
			return
		}
	}
	d := a.Chat.publish(id, ServerUserID, name, *body.Content, a.now())
	resp := struct {
		// Recipients are the members the message was written to here, and
		// those it was published for on the other nodes of a cluster (as
		// those nodes last announced them).
		Recipients int `json:"recipients"`
		// In a cluster only: the same split, and whether the broker took the
		// message. When it did not, only this node's members have it.
		Local     *int  `json:"local,omitempty"`
		Remote    *int  `json:"remote,omitempty"`
		Published *bool `json:"published,omitempty"`
	}{Recipients: d.local + d.remote}
	if a.Chat.Cluster != nil {
		resp.Local, resp.Remote, resp.Published = &d.local, &d.remote, &d.published
	}
	writeJSON(w, http.StatusAccepted, resp)
}
