package chat

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"time"
	"unicode/utf8"

	"github.com/valyala/bytebufferpool"

	"github.com/throng-ws/throng/protocol"
	"github.com/throng-ws/throng/room"
	"github.com/throng-ws/throng/server"
)

// Reasons given to a member an operator takes out of a room, in its left
// message, when the operator gives none.
const (
	ReasonRemoved    = "removed by an operator"
	ReasonRoomClosed = "room closed by an operator"
)

// RemoveMember takes every connection of user out of room roomID on this node,
// as if each had sent leave: the member gets left with the reason, and the
// room's other members get user-left. It returns how many connections it took
// out. It may be called from any goroutine, and waits for the loops.
func (h *Handler) RemoveMember(roomID, user, reason string) int {
	if h.Rooms == nil {
		return 0
	}
	return h.Rooms.Each(roomID, func(m *room.Member) bool {
		if m.UserID() != user {
			return false
		}
		return h.evict(m, reason, true)
	})
}

// CloseRoom takes every member out of room roomID on this node, each told with
// left and the reason. Nobody is sent user-left: everyone is leaving, and a
// room of n members would otherwise cost n² messages. Members may join again
// afterwards. It returns how many memberships it ended.
func (h *Handler) CloseRoom(roomID, reason string) int {
	if h.Rooms == nil {
		return 0
	}
	return h.Rooms.Each(roomID, func(m *room.Member) bool { return h.evict(m, reason, false) })
}

// evict takes m out of its room and tells its connection why. It runs on m's
// loop, inside room.Table.Each.
func (h *Handler) evict(m *room.Member, reason string, tell bool) bool {
	cc, ok := m.Sink.(*chatConn)
	if !ok || !cc.c.Open() {
		return false
	}
	i := cc.index(m)
	if i < 0 {
		return false
	}
	roomID := m.Room()
	if tell {
		h.drop(cc, i)
	} else {
		h.changed(roomID, h.Rooms.Leave(m))
		cc.remove(i)
	}
	b := bytebufferpool.Get()
	b.B = append(b.B, `{"type":"left","roomId":`...)
	b.B = protocol.AppendJSONString(b.B, roomID)
	b.B = append(b.B, `,"reason":`...)
	b.B = protocol.AppendJSONString(b.B, reason)
	b.B = append(b.B, '}')
	cc.c.WriteText(b.B)
	bytebufferpool.Put(b)
	return true
}

// ClusterControl carries operators' actions to the other nodes of a cluster;
// package cluster implements it. The API uses it when the Handler's Cluster
// does.
type ClusterControl interface {
	// Act hands action, an Action as JSON, to every other live node, which
	// runs it on its own connections, and gathers their answers until each
	// has answered or ctx ends. affected is the sum of what they did, nodes
	// how many answered, and partial reports a live node that did not.
	Act(ctx context.Context, action []byte) (affected, nodes int, partial bool, err error)
}

// Action is an operator's action on users and rooms: what the API runs on this
// node and, in a cluster, hands to the others as JSON.
type Action struct {
	Kind   string `json:"kind"`             // ActionDisconnect, ActionRemove or ActionCloseRoom
	User   string `json:"user,omitempty"`   // disconnect, remove
	Room   string `json:"room,omitempty"`   // remove, close-room
	Code   int    `json:"code,omitempty"`   // disconnect: the close code
	Reason string `json:"reason,omitempty"` // the close reason, or the left message's
	// KeyID names the API key that asked, for every node's log (KeyID).
	KeyID string `json:"keyId,omitempty"`
}

// Action kinds.
const (
	ActionDisconnect = "disconnect" // close every connection of User
	ActionRemove     = "remove"     // take User out of Room
	ActionCloseRoom  = "close-room" // take everyone out of Room
)

// Defaults of a disconnect the operator gives no code or reason for: 1008,
// after which throng's clients do not reconnect by themselves.
const (
	DefaultDisconnectCode   = 1008
	DefaultDisconnectReason = "disconnected by an operator"
	// MaxUserID bounds the user ids the API accepts, in bytes.
	MaxUserID = 256
	// maxReason bounds a reason, in bytes: what fits a close frame.
	maxReason = 123
	// ActionTimeout bounds how long an action waits for the other nodes.
	ActionTimeout = 5 * time.Second
)

// KeyID is a short, stable name for an API key that does not reveal it: the
// first 12 hex digits of its SHA-256. Every action is logged with the caller's.
func KeyID(key string) string {
	sum := sha256.Sum256([]byte(key))
	return hex.EncodeToString(sum[:6])
}

// errBadAction is returned by check for an action that cannot run.
var errBadAction = errors.New("chat: bad action")

// check validates act, filling in the defaults.
func (act *Action) check() (field string, err error) {
	switch act.Kind {
	case ActionDisconnect:
		if act.Code == 0 {
			act.Code = DefaultDisconnectCode
		}
		if act.Reason == "" {
			act.Reason = DefaultDisconnectReason
		}
		if !server.ValidCloseCode(act.Code, act.Reason) {
			return "code", server.ErrBadCloseCode
		}
	case ActionRemove, ActionCloseRoom:
		if act.Reason == "" {
			act.Reason = ReasonRemoved
			if act.Kind == ActionCloseRoom {
				act.Reason = ReasonRoomClosed
			}
		}
		if len(act.Reason) > maxReason || !utf8.ValidString(act.Reason) {
			return "reason", errBadAction
		}
		if !protocol.ValidRoomID(act.Room) {
			return "room", errBadAction
		}
	default:
		return "kind", errBadAction
	}
	if act.Kind != ActionCloseRoom && !validUserID(act.User) {
		return "user", errBadAction
	}
	return "", nil
}

func validUserID(id string) bool {
	return id != "" && len(id) <= MaxUserID && utf8.ValidString(id)
}

// run does act on this node's connections and returns how many it affected.
func (a *API) run(ctx context.Context, act Action) (int, error) {
	switch act.Kind {
	case ActionDisconnect:
		if a.Server == nil {
			return 0, errors.New("chat: no server to disconnect from")
		}
		return a.Server.CloseUser(ctx, act.User, act.Code, act.Reason)
	case ActionRemove:
		return a.Chat.RemoveMember(act.Room, act.User, act.Reason), nil
	case ActionCloseRoom:
		return a.Chat.CloseRoom(act.Room, act.Reason), nil
	}
	return 0, errBadAction
}

// RunRemote runs an action another node of the cluster received from its API
// (an Action as JSON) on this node's connections, logs it with the key id it
// carries, and returns how many connections or memberships it affected.
// Package cluster calls it for each such request.
func (a *API) RunRemote(ctx context.Context, action []byte) (int, error) {
	var act Action
	if err := json.Unmarshal(action, &act); err != nil {
		return 0, err
	}
	if _, err := act.check(); err != nil {
		return 0, err
	}
	n, err := a.run(ctx, act)
	a.logAction(act, "cluster", n, err)
	return n, err
}

func (a *API) logAction(act Action, via string, n int, err error) {
	log := a.Logger
	if log == nil {
		return
	}
	attrs := []slog.Attr{slog.String("action", act.Kind), slog.String("key_id", act.KeyID), slog.String("via", via)}
	if act.User != "" {
		attrs = append(attrs, slog.String("user", act.User))
	}
	if act.Room != "" {
		attrs = append(attrs, slog.String("room", act.Room))
	}
	if act.Kind == ActionDisconnect {
		attrs = append(attrs, slog.Int("code", act.Code))
	}
	attrs = append(attrs, slog.String("reason", act.Reason), slog.Int("affected", n))
	level := slog.LevelInfo
	if err != nil {
		level = slog.LevelWarn
		attrs = append(attrs, slog.String("err", err.Error()))
	}
	log.LogAttrs(context.Background(), level, "operator action", attrs...)
}

// actionResult is the answer to an action.
type actionResult struct {
	Action string `json:"action"`
	User   string `json:"user,omitempty"`
	Room   string `json:"room,omitempty"`
	// Affected is the connections closed (disconnect) or memberships ended
	// (remove, close-room), on every node that answered.
	Affected int `json:"affected"`
	// In a cluster only: the split, how many other nodes answered, and
	// whether a live node did not answer in time (its part is not counted,
	// and may or may not have happened).
	Local   *int  `json:"local,omitempty"`
	Remote  *int  `json:"remote,omitempty"`
	Nodes   *int  `json:"nodes,omitempty"`
	Partial *bool `json:"partial,omitempty"`
}

// act answers an action request: it reads the optional body (code and
// reason) into act, checks it, runs it here and on the other nodes, and logs
// it with the caller's key id.
func (a *API) act(w http.ResponseWriter, r *http.Request, act Action) {
	if r.ContentLength != 0 {
		var body struct {
			Code   *int    `json:"code"`
			Reason *string `json:"reason"`
		}
		dec := json.NewDecoder(io.LimitReader(r.Body, 64<<10))
		if err := dec.Decode(&body); err != nil && !errors.Is(err, io.EOF) {
			writeAPIError(w, http.StatusBadRequest, protocol.CodeInvalidJSON, protocol.TextInvalidJSON)
			return
		}
		if body.Code != nil {
			if act.Kind != ActionDisconnect {
				writeAPIError(w, http.StatusBadRequest, protocol.CodeInvalidMessage, protocol.TextInvalidMessage+": code (only a disconnect has one)")
				return
			}
			act.Code = *body.Code
			if act.Code == 0 {
				act.Code = -1 // an explicit 0 is refused, not taken as the default
			}
		}
		if body.Reason != nil {
			act.Reason = *body.Reason
		}
	}
	act.KeyID = KeyID(a.Key)
	if field, err := act.check(); err != nil {
		msg := protocol.TextInvalidMessage + ": " + field
		if errors.Is(err, server.ErrBadCloseCode) {
			msg += " must be 1000, 1001, 1008, 1011 or 3000-4999, with a reason of at most 123 bytes of UTF-8"
		}
		writeAPIError(w, http.StatusBadRequest, protocol.CodeInvalidMessage, msg)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), ActionTimeout)
	defer cancel()
	local, err := a.run(ctx, act)
	res := actionResult{Action: act.Kind, User: act.User, Room: act.Room, Affected: local}
	if cc, ok := a.cluster().(ClusterControl); ok {
		b, _ := json.Marshal(act)
		remote, nodes, partial, rerr := cc.Act(ctx, b)
		partial = partial || rerr != nil
		res.Affected += remote
		res.Local, res.Remote, res.Nodes, res.Partial = &local, &remote, &nodes, &partial
		if rerr != nil && err == nil {
			err = rerr
		}
	}
	a.logAction(act, "api", res.Affected, err)
	if err != nil && res.Affected == 0 && res.Partial == nil {
		writeAPIError(w, http.StatusServiceUnavailable, "unavailable", "the action did not complete: "+err.Error())
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (a *API) disconnect(w http.ResponseWriter, r *http.Request) {
	user := r.PathValue("user")
	if !validUserID(user) {
		writeAPIError(w, http.StatusBadRequest, "invalid_user", "user id must be 1 to "+strconv.Itoa(MaxUserID)+" bytes of UTF-8")
		return
	}
	a.act(w, r, Action{Kind: ActionDisconnect, User: user})
}

func (a *API) removeMember(w http.ResponseWriter, r *http.Request) {
	id, ok := a.roomID(w, r)
	if !ok {
		return
	}
	user := r.PathValue("user")
	if !validUserID(user) {
		writeAPIError(w, http.StatusBadRequest, "invalid_user", "user id must be 1 to "+strconv.Itoa(MaxUserID)+" bytes of UTF-8")
		return
	}
	a.act(w, r, Action{Kind: ActionRemove, Room: id, User: user})
}

func (a *API) closeRoom(w http.ResponseWriter, r *http.Request) {
	id, ok := a.roomID(w, r)
	if !ok {
		return
	}
	a.act(w, r, Action{Kind: ActionCloseRoom, Room: id})
}
