package server

import (
	"crypto/subtle"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/throng-ws/throng/room"
)

// API is the HTTP API for backends, on the HTTP listener:
//
//	GET  /api/rooms?after=ID&limit=N   rooms with member counts, in id order
//	GET  /api/rooms/{id}               a room's members
//	POST /api/rooms/{id}/messages      {"content":C[,"userName":N]} to every member
//	GET  /api/stats                    the Overview: connections, memory, counters
//
// Every request carries the key as a bearer token.
type API struct {
	// Key authenticates requests. It must not be empty.
	Key string
	// Chat publishes messages.
	Chat *Chat
	// Rooms is the chat's room table.
	Rooms *room.Table
	// Server is the server whose Overview GET /api/stats returns. If nil, that
	// route is not registered.
	Server *Server
	// Now timestamps published messages. If nil, time.Now is used.
	Now func() time.Time
}

// Paging limits for GET /api/rooms.
const (
	DefaultRoomsPage = 100
	MaxRoomsPage     = 1000
)

// Register adds the API's routes to mux.
func (a *API) Register(mux *http.ServeMux) error {
	if a.Key == "" {
		return errors.New("server: API key is empty")
	}
	mux.Handle("GET /api/rooms", a.authed(a.listRooms))
	mux.Handle("GET /api/rooms/{id}", a.authed(a.getRoom))
	mux.Handle("POST /api/rooms/{id}/messages", a.authed(a.publish))
	if a.Server != nil {
		mux.Handle("GET /api/stats", a.authed(a.stats))
	}
	return nil
}

func (a *API) stats(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, a.Server.Overview(a.Chat, a.Rooms))
}

// apiError is the body of every API error.
type apiError struct {
	Error struct {
		Code    string `json:"code"`
		Message string `json:"message"`
	} `json:"error"`
}

func writeAPIError(w http.ResponseWriter, status int, code, msg string) {
	var e apiError
	e.Error.Code, e.Error.Message = code, msg
	writeJSON(w, status, e)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}

func (a *API) authed(h http.HandlerFunc) http.Handler {
	want := []byte(a.Key)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		// The scheme name is case-insensitive (RFC 9110 section 11.1), as the
		// WebSocket handshake already treats it.
		scheme, got, ok := strings.Cut(r.Header.Get("Authorization"), " ")
		if !ok || !strings.EqualFold(scheme, "Bearer") || subtle.ConstantTimeCompare([]byte(got), want) != 1 {
			w.Header().Set("WWW-Authenticate", `Bearer realm="throng-api"`)
			writeAPIError(w, http.StatusUnauthorized, "unauthorized", "a valid API key is required as a bearer token")
			return
		}
		h(w, r)
	})
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
	rooms := a.Rooms.List(r.URL.Query().Get("after"), limit+1)
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
	if id == "" || len(id) > MaxRoomID || !printable([]byte(id)) {
		writeAPIError(w, http.StatusBadRequest, "invalid_room", "room id must be 1 to 128 bytes of printable UTF-8")
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
	if !ok {
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
	}{id, len(members), members})
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
		writeAPIError(w, http.StatusBadRequest, CodeInvalidJSON, "Invalid JSON")
		return
	}
	maxContent := cmpOr(a.Chat.MaxContent, DefaultMaxContent)
	if body.Content == nil || !utf8.ValidString(*body.Content) {
		writeAPIError(w, http.StatusBadRequest, CodeInvalidMessage, "Invalid message format: content")
		return
	}
	if n := utf8.RuneCountInString(*body.Content); n == 0 || n > maxContent {
		writeAPIError(w, http.StatusBadRequest, CodeInvalidMessage, "Invalid message format: content")
		return
	}
	name := ServerUserID
	if body.UserName != nil {
		name = *body.UserName
		if n := utf8.RuneCountInString(name); n == 0 || n > MaxUserName || !printable([]byte(name)) {
			writeAPIError(w, http.StatusBadRequest, CodeInvalidMessage, "Invalid message format: userName")
			return
		}
	}
	n := a.Chat.Publish(id, ServerUserID, name, *body.Content, a.now())
	writeJSON(w, http.StatusAccepted, struct {
		Recipients int `json:"recipients"`
	}{n})
}
