// Package client is a Go client for throng's chat protocol (the /ws endpoint).
// Programs use it to talk to rooms the way the browser client does: it dials
// with a token, sends and receives the protocol's typed messages, waits for the
// replies to Join, Leave, Ping and Refresh, and keeps a session alive across
// disconnects. It reconnects with exponential backoff and full jitter, joins
// its rooms again under the same names, and refreshes its token before the
// server would end the session for it.
//
// The transport is github.com/coder/websocket; throng's own tests speak to the
// server with a different library, so the two check each other.
package client

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/coder/websocket"

	"github.com/throng-ws/throng/protocol"
)

// TokenVia says how the token is presented at the handshake.
type TokenVia uint8

const (
	// TokenHeader sends "Authorization: Bearer <token>".
	TokenHeader TokenVia = iota
	// TokenSubprotocol offers a "bearer.<token>" subprotocol, as browsers must;
	// the server never echoes it back.
	TokenSubprotocol
	// TokenQuery adds ?token=<token> to the URL, as the seed's browser client
	// does. Proxies may log URLs: prefer the other two.
	TokenQuery
)

func (v TokenVia) String() string {
	switch v {
	case TokenHeader:
		return "header"
	case TokenSubprotocol:
		return "subprotocol"
	case TokenQuery:
		return "query"
	}
	return fmt.Sprintf("tokenvia(%d)", uint8(v))
}

// State is where the client's session stands.
type State uint8

const (
	// StateConnecting: the first dial is in progress.
	StateConnecting State = iota
	// StateOpen: connected; calls are sent.
	StateOpen
	// StateReconnecting: the connection dropped and the client is waiting or
	// dialing again. Calls fail with ErrNotConnected meanwhile.
	StateReconnecting
	// StateClosed: the client stopped for good; Err says why.
	StateClosed
)

func (s State) String() string {
	switch s {
	case StateConnecting:
		return "connecting"
	case StateOpen:
		return "open"
	case StateReconnecting:
		return "reconnecting"
	case StateClosed:
		return "closed"
	}
	return fmt.Sprintf("state(%d)", uint8(s))
}

// Errors.
var (
	// ErrClosed is returned by calls after Close, and by Err once Close was called.
	ErrClosed = errors.New("client: closed")
	// ErrNotConnected is returned by calls made while the client is reconnecting.
	ErrNotConnected = errors.New("client: not connected")
	// ErrDisconnected is returned by a call whose connection dropped before the
	// reply came.
	ErrDisconnected = errors.New("client: disconnected before the reply")
	// ErrUnauthorized means the server refused the token: a 401 at the
	// handshake, or a close 1008 before the connection was greeted.
	ErrUnauthorized = errors.New("client: token refused")
	// ErrGaveUp is the reason a client stopped after MaxAttempts failed
	// reconnects.
	ErrGaveUp = errors.New("client: gave up reconnecting")
	// ErrNotInRoom is returned by Send for a room the client has not joined.
	ErrNotInRoom = errors.New("client: not in this room")
	// ErrInvalid is returned for a room id, name or content the server would
	// refuse; it is checked before anything is sent.
	ErrInvalid = errors.New("client: invalid argument")
)

var errBadRoom = fmt.Errorf("%w: room id must be 1 to %d bytes of printable UTF-8", ErrInvalid, protocol.MaxRoomID)

// CloseError is a connection the server closed, with its close code and reason.
type CloseError struct {
	Code   int
	Reason string
}

func (e *CloseError) Error() string {
	if e.Reason == "" {
		return fmt.Sprintf("client: connection closed (%d)", e.Code)
	}
	return fmt.Sprintf("client: connection closed (%d %s)", e.Code, e.Reason)
}

// Options configures a Client. The zero value dials without a token and uses
// the documented defaults.
type Options struct {
	// Token is the JWT presented at the handshake. If empty, none is sent.
	Token string
	// TokenVia chooses how the token is sent. The zero value is TokenHeader.
	TokenVia TokenVia
	// Subprotocols are offered at the handshake. If nil, DefaultSubprotocols is
	// used.
	Subprotocols []string
	// Header is added to the handshake request.
	Header http.Header
	// HTTPClient dials. If nil, http.DefaultClient is used. It must not set a
	// Timeout: it would cut live connections.
	HTTPClient *http.Client
	// HandshakeTimeout bounds each reconnect's dial and greeting. If zero,
	// DefaultHandshakeTimeout is used. Dial's own attempt is bounded by its ctx.
	HandshakeTimeout time.Duration
	// ReadLimit bounds a received message. If zero, DefaultReadLimit is used.
	ReadLimit int64
	// NoCompression leaves permessage-deflate (RFC 7692) out of the
	// handshake. By default it is offered without context takeover, which
	// throng asks for anyway: messages are compressed and inflated one at a
	// time and the client keeps no compressor between them. The client
	// compresses what it sends from CompressionMinSize bytes, as the server
	// does by default.
	NoCompression bool

	// RefreshToken returns a fresh token for the same user. If set, the client
	// calls it RefreshBefore ahead of the token's exp and sends the result as a
	// refresh message; it also calls it when the server ends a session with
	// token_expired or refuses a reconnect's token, and reconnects with the new
	// one. If nil, tokens are never refreshed and a close 1008 ends the client.
	RefreshToken func(ctx context.Context) (string, error)
	// RefreshBefore is how long before the token's exp it is refreshed. If zero,
	// a tenth of the token's lifetime is used, at most DefaultRefreshBefore.
	RefreshBefore time.Duration

	// History is how many recent messages a Join asks for, delivered to
	// OnMessage before it returns; a rejoin that cannot recover what was
	// missed gets as many as context. If zero, none on Join, and the server's
	// default as context.
	History int

	// MaxAttempts is how many reconnects in a row may fail before the client
	// stops with ErrGaveUp. If zero, DefaultMaxAttempts is used; if negative,
	// the client does not reconnect at all.
	MaxAttempts int
	// BaseDelay is the first reconnect's longest wait; each later one doubles
	// it. If zero, DefaultBaseDelay is used.
	BaseDelay time.Duration
	// MaxDelay caps the wait between reconnects. If zero, DefaultMaxDelay is used.
	MaxDelay time.Duration
	// Rand draws the backoff jitter; see Backoff.Rand. Only the client's own
	// goroutine uses it.
	Rand rand.Source

	// Handlers. They run one at a time, in the order the messages arrive, on the
	// client's goroutine: they must return quickly, and must not call Join,
	// Leave, Ping, Refresh or Close, which wait for that goroutine (Send is
	// fine). Nil handlers are skipped.

	// OnConnected is called for each connection's greeting, reconnects included.
	OnConnected func(Connected)
	// OnJoined is called when a join succeeds, rejoins after a reconnect
	// included. After a reconnect, with history on the server, the client asks
	// to recover each room from the last message it had; the messages it missed
	// reach OnMessage first, and Joined.Recovered tells whether they were all
	// there (false: some may be missing, and the room's recent ones were sent).
	OnJoined func(Joined)
	// OnLeft is called when a leave succeeds.
	OnLeft func(Left)
	// OnMessage is called for every chat message in the client's rooms, its own
	// included.
	OnMessage func(Message)
	// OnUserJoined is called when someone else joins one of the client's rooms.
	OnUserJoined func(UserJoined)
	// OnUserLeft is called when someone else leaves or disconnects.
	OnUserLeft func(UserLeft)
	// OnError is called for each error message that is not the answer to a
	// waiting call (those are returned by the call): rate_limited after a Send,
	// token_expired, messages_dropped, a failed rejoin.
	OnError func(*ServerError)
	// OnState is called when the session's state changes, with the cause: a
	// *CloseError or dial error when the connection drops, the final error on
	// StateClosed.
	OnState func(State, error)

	// Logger receives the client's logs. If nil, logs are discarded.
	Logger *slog.Logger
}

// Defaults for Options.
const (
	DefaultMaxAttempts      = 10
	DefaultHandshakeTimeout = 10 * time.Second
	DefaultReadLimit        = 1 << 20
	DefaultRefreshBefore    = time.Minute
	// refreshTimeout bounds one automatic refresh: the hook and the reply.
	refreshTimeout = 10 * time.Second
)

// CompressionMinSize is the shortest message the client sends compressed,
// server.DefaultCompressionMinSize.
const CompressionMinSize = 128

// DefaultSubprotocols is offered when Options.Subprotocols is nil. throng picks
// it, which browsers require once they offer "bearer.<token>".
var DefaultSubprotocols = []string{"throng.v1"}

// Client is a chat session with a throng server. It is safe for concurrent use.
type Client struct {
	url     string
	opts    Options
	log     *slog.Logger
	backoff Backoff // used only by run

	ctx    context.Context // canceled by Close
	cancel context.CancelFunc
	wg     sync.WaitGroup // run and refresher
	done   chan struct{}  // closed when run returns

	// wmu orders writes, so calls enter pending in the order the server sees
	// them. Lock order: wmu, then mu.
	wmu sync.Mutex

	mu        sync.Mutex
	conn      *websocket.Conn              // guarded by mu; nil while disconnected
	state     State                        // guarded by mu
	closing   bool                         // guarded by mu: Close was called
	err       error                        // guarded by mu: why the client stopped
	userID    string                       // guarded by mu
	rooms     map[string]string            // guarded by mu: joined rooms → the name used, for rejoins
	positions map[string]protocol.Position // guarded by mu: a room's last message, for recovery
	pending   []*call                      // guarded by mu: calls awaiting replies, in send order
	token     string                       // guarded by mu
	tokenExp  time.Time                    // guarded by mu; zero: no exp or not a JWT
	tokenLife time.Duration                // guarded by mu: exp minus when the token was set
	expired   bool                         // guarded by mu: this connection was told token_expired
	tokenSet  chan struct{}                // signaled when the token changes; wakes the refresher
}

// call is one request waiting for its reply.
type call struct {
	kind   string             // the request's Type
	room   string             // for join and leave
	name   string             // for join: the userName, remembered for rejoins
	token  string             // for refresh
	rejoin bool               // made by adopt after a reconnect: nobody waits for it
	since  *protocol.Position // for a rejoin: where the room's messages stopped
	sent   time.Time
	reply  chan result // buffered: the read loop never blocks on it
}

type result struct {
	m   Msg
	err error
}

// answers reports whether an error code can be the server's reply to c. Every
// request can be rate limited; that case is handled before this is asked.
func (c *call) answers(code string) bool {
	switch c.kind {
	case "join":
		switch code {
		case CodeInvalidMessage, CodeAlreadyInRoom, CodeTooManyRooms, CodeRoomFull, CodeUnavailable:
			return true
		}
	case "leave":
		return code == CodeInvalidMessage || code == CodeNotInRoom
	case "refresh":
		return code == CodeInvalidMessage || code == CodeInvalidToken
	case "history":
		switch code {
		case CodeInvalidMessage, CodeNotInRoom, CodeUnavailable, CodeUnknownEpoch:
			return true
		}
	}
	return false
}

// Dial connects to a throng /ws URL (ws:// or wss://), waits for the server's
// greeting, and returns a client that keeps the session alive until Close. If
// the first connection fails, Dial returns the error and does not retry: a 401
// or an early close 1008 matches ErrUnauthorized.
func Dial(ctx context.Context, rawURL string, opts Options) (*Client, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return nil, fmt.Errorf("client: bad URL: %w", err)
	}
	if u.Scheme != "ws" && u.Scheme != "wss" && u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("client: bad URL scheme %q: want ws or wss", u.Scheme)
	}
	if opts.Subprotocols == nil {
		opts.Subprotocols = DefaultSubprotocols
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = DefaultHandshakeTimeout
	}
	if opts.ReadLimit <= 0 {
		opts.ReadLimit = DefaultReadLimit
	}
	if opts.MaxAttempts == 0 {
		opts.MaxAttempts = DefaultMaxAttempts
	}
	c := &Client{
		url:       rawURL,
		opts:      opts,
		log:       opts.Logger,
		backoff:   Backoff{Base: opts.BaseDelay, Max: opts.MaxDelay, Rand: opts.Rand},
		done:      make(chan struct{}),
		rooms:     make(map[string]string),
		positions: make(map[string]protocol.Position),
		tokenSet:  make(chan struct{}, 1),
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.setTokenLocked(opts.Token)
	conn, hello, err := c.connect(ctx)
	if err != nil {
		return nil, err
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.conn, c.state, c.userID = conn, StateOpen, hello.UserID
	c.notifyState(StateOpen, nil)
	if h := c.opts.OnConnected; h != nil {
		h(*hello)
	}
	c.wg.Add(2)
	go c.run(conn)
	go c.refresher()
	return c, nil
}

// connect dials once with the current token and reads the greeting.
func (c *Client) connect(ctx context.Context) (*websocket.Conn, *Connected, error) {
	c.mu.Lock()
	token := c.token
	c.mu.Unlock()
	target := c.url
	do := &websocket.DialOptions{HTTPClient: c.opts.HTTPClient, Subprotocols: c.opts.Subprotocols, CompressionMode: websocket.CompressionNoContextTakeover, CompressionThreshold: CompressionMinSize}
	if c.opts.NoCompression {
		do.CompressionMode = websocket.CompressionDisabled
	}
	if c.opts.Header != nil {
		do.HTTPHeader = c.opts.Header.Clone()
	}
	if token != "" {
		switch c.opts.TokenVia {
		case TokenHeader:
			if do.HTTPHeader == nil {
				do.HTTPHeader = make(http.Header)
			}
			do.HTTPHeader.Set("Authorization", "Bearer "+token)
		case TokenSubprotocol:
			do.Subprotocols = append(slices.Clip(do.Subprotocols), "bearer."+token)
		case TokenQuery:
			u, _ := url.Parse(c.url) // parsed in Dial
			q := u.Query()
			q.Set("token", token)
			u.RawQuery = q.Encode()
			target = u.String()
		}
	}
	conn, resp, err := websocket.Dial(ctx, target, do)
	if err != nil {
		if resp != nil && resp.StatusCode != http.StatusSwitchingProtocols {
			return nil, nil, &HandshakeError{StatusCode: resp.StatusCode}
		}
		return nil, nil, fmt.Errorf("client: dial: %w", err)
	}
	conn.SetReadLimit(c.opts.ReadLimit)
	// The greeting comes first; a token refused after the upgrade
	// (--auth-failure=close) arrives as a close instead.
	for {
		typ, data, err := conn.Read(ctx)
		if err != nil {
			conn.CloseNow()
			ce := closeError(err)
			if ce.Code == int(websocket.StatusPolicyViolation) {
				return nil, nil, fmt.Errorf("%w: %w", ErrUnauthorized, ce)
			}
			return nil, nil, ce
		}
		if typ != websocket.MessageText {
			continue
		}
		m, err := Decode(data)
		if err != nil {
			continue
		}
		if hello, ok := m.(*Connected); ok {
			return conn, hello, nil
		}
	}
}

// closeError turns a read error into the server's close code and reason;
// anything but a close frame is a dropped connection, 1006.
func closeError(err error) *CloseError {
	var ce websocket.CloseError
	if errors.As(err, &ce) {
		return &CloseError{Code: int(ce.Code), Reason: ce.Reason}
	}
	return &CloseError{Code: int(websocket.StatusAbnormalClosure), Reason: ""}
}

// State returns the session's state.
func (c *Client) State() State {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.state
}

// UserID is the user id the server greeted the latest connection with.
func (c *Client) UserID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.userID
}

// Rooms returns the rooms the client is in (and will rejoin), sorted.
func (c *Client) Rooms() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	rs := make([]string, 0, len(c.rooms))
	for r := range c.rooms {
		rs = append(rs, r)
	}
	slices.Sort(rs)
	return rs
}

// Token returns the token in use and its expiry (zero if it has none).
func (c *Client) Token() (string, time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.token, c.tokenExp
}

// Done is closed when the client has stopped for good.
func (c *Client) Done() <-chan struct{} { return c.done }

// Err says why the client stopped: ErrClosed after Close, a *CloseError for a
// close that is not retried, ErrGaveUp wrapped with the last cause, or a
// refresh failure. It is nil while the client runs.
func (c *Client) Err() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.err
}

// Close ends the session: a close 1000 to the server, then the client's
// goroutines stop. Waiting calls return ErrClosed. It must not be called from a
// handler.
func (c *Client) Close() error {
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		<-c.done
		return nil
	}
	c.closing = true
	conn := c.conn
	c.mu.Unlock()
	if conn != nil {
		conn.Close(websocket.StatusNormalClosure, "")
	}
	c.cancel()
	c.wg.Wait()
	return nil
}

// Join joins a room under userName and waits for the server's joined, which it
// returns, or its refusal as a *ServerError. The client rejoins the room with
// the same name after every reconnect until Leave.
func (c *Client) Join(ctx context.Context, roomID, userName string) (*Joined, error) {
	if !protocol.ValidRoomID(roomID) {
		return nil, errBadRoom
	}
	if !protocol.ValidUserName(userName) {
		return nil, fmt.Errorf("%w: user name must be 1 to %d printable characters", ErrInvalid, protocol.MaxUserName)
	}
	r, err := c.roundTrip(ctx, &call{kind: "join", room: roomID, name: userName}, Join{RoomID: roomID, UserName: userName, History: c.opts.History})
	if err != nil {
		return nil, err
	}
	return r.(*Joined), nil
}

// Position returns the offset and epoch of the last message the client has
// from a room it is in; ok is false before the first, or with history off.
func (c *Client) Position(roomID string) (pos protocol.Position, ok bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	pos, ok = c.positions[roomID]
	return pos, ok
}

// History asks for up to limit of a room's messages before offset before (0:
// the newest), oldest first. The client must be in the room. A non-empty
// epoch must be the room's, or the server answers unknown_epoch.
func (c *Client) History(ctx context.Context, roomID string, before uint64, limit int, epoch string) (*HistoryPage, error) {
	if !protocol.ValidRoomID(roomID) {
		return nil, errBadRoom
	}
	r, err := c.roundTrip(ctx, &call{kind: "history", room: roomID}, HistoryRequest{RoomID: roomID, Before: before, Limit: limit, Epoch: epoch})
	if err != nil {
		return nil, err
	}
	return r.(*HistoryPage), nil
}

// Leave leaves a room and waits for the server's left.
func (c *Client) Leave(ctx context.Context, roomID string) error {
	if !protocol.ValidRoomID(roomID) {
		return errBadRoom
	}
	_, err := c.roundTrip(ctx, &call{kind: "leave", room: roomID}, Leave{RoomID: roomID})
	return err
}

// Ping sends the protocol's ping and returns the time until its pong.
func (c *Client) Ping(ctx context.Context) (time.Duration, error) {
	cl := &call{kind: "ping"}
	if _, err := c.roundTrip(ctx, cl, Ping{}); err != nil {
		return 0, err
	}
	return time.Since(cl.sent), nil
}

// Refresh sends a new token for the same user and waits for refreshed. The
// token is then the one used for reconnects. While disconnected it is only
// kept for the next connection.
func (c *Client) Refresh(ctx context.Context, token string) error {
	if token == "" {
		return fmt.Errorf("%w: empty token", ErrInvalid)
	}
	_, err := c.roundTrip(ctx, &call{kind: "refresh", token: token}, Refresh{Token: token})
	if errors.Is(err, ErrNotConnected) {
		c.mu.Lock()
		c.setTokenLocked(token)
		c.mu.Unlock()
		return nil
	}
	return err
}

// Send sends a chat message to a room the client has joined. It does not wait:
// the server's copy of the message arrives through OnMessage, a refusal through
// OnError. ctx bounds the write; if it expires mid-write the connection is
// dropped (and the client reconnects), as a half-written frame cannot be taken
// back.
func (c *Client) Send(ctx context.Context, roomID, content string) error {
	if content == "" {
		return fmt.Errorf("%w: empty message", ErrInvalid)
	}
	c.mu.Lock()
	_, in := c.rooms[roomID]
	c.mu.Unlock()
	if !in {
		return ErrNotInRoom
	}
	return c.write(ctx, nil, Chat{RoomID: roomID, Content: content})
}

// roundTrip sends m as cl and waits for the reply.
func (c *Client) roundTrip(ctx context.Context, cl *call, m Msg) (Msg, error) {
	cl.reply = make(chan result, 1)
	if err := c.write(ctx, cl, m); err != nil {
		return nil, err
	}
	select {
	case r := <-cl.reply:
		return r.m, r.err
	case <-ctx.Done():
		// The call stays pending: its late reply must not be taken for the
		// next call's.
		return nil, ctx.Err()
	}
}

// write sends m on the current connection; a non-nil cl joins pending first, so
// its reply cannot arrive before it is looked for.
func (c *Client) write(ctx context.Context, cl *call, m Msg) error {
	b, err := Encode(m)
	if err != nil {
		return err
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	conn := c.conn
	switch {
	case c.closing || c.state == StateClosed:
		c.mu.Unlock()
		return ErrClosed
	case conn == nil:
		c.mu.Unlock()
		return ErrNotConnected
	}
	if cl != nil {
		cl.sent = time.Now()
		c.pending = append(c.pending, cl)
	}
	c.mu.Unlock()
	if err := conn.Write(ctx, websocket.MessageText, b); err != nil {
		if cl != nil {
			c.mu.Lock()
			if i := slices.Index(c.pending, cl); i >= 0 {
				c.pending = slices.Delete(c.pending, i, i+1)
			}
			c.mu.Unlock()
		}
		return fmt.Errorf("client: write: %w", err)
	}
	return nil
}

// run owns the connection: it reads until the connection drops, then
// reconnects or stops.
func (c *Client) run(conn *websocket.Conn) {
	defer c.wg.Done()
	defer close(c.done)
	for {
		err := c.readLoop(conn)
		conn.CloseNow()
		ce := closeError(err)

		c.mu.Lock()
		c.conn = nil
		c.failPendingLocked(ErrDisconnected)
		closing, expired := c.closing, c.expired
		c.expired = false
		c.mu.Unlock()

		var stop error
		refresh := false
		switch {
		case closing:
			stop = ErrClosed
		case expired && c.opts.RefreshToken != nil:
			refresh = true // 1008 token_expired: the same user comes back with a new token
		case !Retryable(ce.Code):
			stop = ce
		case c.opts.MaxAttempts < 0:
			stop = ce
		}
		if stop != nil {
			c.finish(stop)
			return
		}
		c.log.Info("disconnected; reconnecting", "code", ce.Code, "reason", ce.Reason)
		c.setState(StateReconnecting, ce)
		if conn = c.reconnect(ce, refresh); conn == nil {
			return
		}
	}
}

// readLoop reads and dispatches messages until the connection fails.
func (c *Client) readLoop(conn *websocket.Conn) error {
	for {
		typ, data, err := conn.Read(c.ctx)
		if err != nil {
			return err
		}
		if typ != websocket.MessageText {
			continue
		}
		m, err := Decode(data)
		if err != nil {
			c.log.Debug("undecodable message", "err", err)
			continue
		}
		c.dispatch(m)
	}
}

// reconnect dials until it gets a connection, which it returns after sending
// the rejoins, or stops the client and returns nil.
func (c *Client) reconnect(cause error, refresh bool) *websocket.Conn {
	for attempt := 1; ; attempt++ {
		if attempt > c.opts.MaxAttempts {
			c.finish(fmt.Errorf("%w after %d attempts: %w", ErrGaveUp, c.opts.MaxAttempts, cause))
			return nil
		}
		d := c.backoff.Delay(attempt)
		c.log.Debug("reconnect", "attempt", attempt, "delay", d)
		t := time.NewTimer(d)
		select {
		case <-c.ctx.Done():
			t.Stop()
			c.finish(ErrClosed)
			return nil
		case <-t.C:
		}
		if refresh {
			if err := c.refreshForReconnect(); err != nil {
				cause = err
				continue
			}
			refresh = false
		}
		ctx, cancel := context.WithTimeout(c.ctx, c.opts.HandshakeTimeout)
		conn, hello, err := c.connect(ctx)
		cancel()
		if err != nil {
			c.log.Debug("reconnect failed", "attempt", attempt, "err", err)
			cause = err
			switch {
			case errors.Is(err, ErrUnauthorized) && c.opts.RefreshToken != nil:
				refresh = true
			case errors.Is(err, ErrUnauthorized), !retryableHandshake(err):
				c.finish(err)
				return nil
			}
			continue
		}
		if !c.adopt(conn, hello) {
			conn.Close(websocket.StatusNormalClosure, "")
			c.finish(ErrClosed)
			return nil
		}
		return conn
	}
}

// adopt makes conn the live connection, greets the handlers and rejoins the
// rooms. It reports false if Close came first.
func (c *Client) adopt(conn *websocket.Conn, hello *Connected) bool {
	c.wmu.Lock()
	c.mu.Lock()
	if c.closing {
		c.mu.Unlock()
		c.wmu.Unlock()
		return false
	}
	c.conn, c.userID = conn, hello.UserID
	rejoin := make([]*call, 0, len(c.rooms))
	for room, name := range c.rooms {
		cl := &call{kind: "join", room: room, name: name, rejoin: true, sent: time.Now(), reply: make(chan result, 1)}
		if pos, ok := c.positions[room]; ok {
			cl.since = &pos
		}
		rejoin = append(rejoin, cl)
	}
	slices.SortFunc(rejoin, func(a, b *call) int { return strings.Compare(a.room, b.room) })
	c.pending = append(c.pending, rejoin...)
	c.mu.Unlock()
	// Writing under wmu keeps the joins ahead of any call made once the state is
	// open. Their replies are read by run after this returns; nobody waits on
	// them: dispatch handles a refused rejoin.
	for _, cl := range rejoin {
		b, _ := Encode(Join{RoomID: cl.room, UserName: cl.name, Since: cl.since, History: c.opts.History})
		ctx, cancel := context.WithTimeout(c.ctx, c.opts.HandshakeTimeout)
		err := conn.Write(ctx, websocket.MessageText, b)
		cancel()
		if err != nil {
			break // run's read sees the dead connection and reconnects
		}
	}
	c.wmu.Unlock()
	c.setState(StateOpen, nil)
	if h := c.opts.OnConnected; h != nil {
		h(*hello)
	}
	return true
}

// refreshForReconnect gets a new token from the hook before a reconnect.
func (c *Client) refreshForReconnect() error {
	ctx, cancel := context.WithTimeout(c.ctx, refreshTimeout)
	defer cancel()
	tok, err := c.opts.RefreshToken(ctx)
	if err != nil {
		return fmt.Errorf("client: refresh token: %w", err)
	}
	c.mu.Lock()
	c.setTokenLocked(tok)
	c.mu.Unlock()
	return nil
}

// dispatch hands a message to the call it answers and to its handler.
func (c *Client) dispatch(m Msg) {
	o := &c.opts
	switch m := m.(type) {
	case *Joined:
		c.mu.Lock()
		if cl := c.takeLocked(func(cl *call) bool { return cl.kind == "join" && cl.room == m.RoomID }); cl != nil {
			c.rooms[m.RoomID] = cl.name
			cl.reply <- result{m: m}
		}
		if m.Epoch != "" {
			// Every message up to the room's newest at the join was sent
			// before joined, or is lost for good (Recovered false).
			c.positions[m.RoomID] = protocol.Position{Offset: m.Offset, Epoch: m.Epoch}
		} else {
			delete(c.positions, m.RoomID)
		}
		c.mu.Unlock()
		if o.OnJoined != nil {
			o.OnJoined(*m)
		}
	case *Left:
		c.mu.Lock()
		delete(c.rooms, m.RoomID)
		delete(c.positions, m.RoomID)
		if cl := c.takeLocked(func(cl *call) bool { return cl.kind == "leave" && cl.room == m.RoomID }); cl != nil {
			cl.reply <- result{m: m}
		}
		c.mu.Unlock()
		if o.OnLeft != nil {
			o.OnLeft(*m)
		}
	case *Pong:
		c.answer("ping", m)
	case *HistoryPage:
		c.mu.Lock()
		if cl := c.takeLocked(func(cl *call) bool { return cl.kind == "history" && cl.room == m.RoomID }); cl != nil {
			cl.reply <- result{m: m}
		}
		c.mu.Unlock()
	case *Refreshed:
		c.mu.Lock()
		if cl := c.takeLocked(func(cl *call) bool { return cl.kind == "refresh" }); cl != nil {
			c.setTokenLocked(cl.token)
			if !m.ExpiresAt.IsZero() {
				c.tokenExp = m.ExpiresAt
			}
			cl.reply <- result{m: m}
		}
		c.mu.Unlock()
	case *Message:
		if m.Offset > 0 {
			c.mu.Lock()
			if p := c.positions[m.RoomID]; m.Epoch != p.Epoch || m.Offset > p.Offset {
				c.positions[m.RoomID] = protocol.Position{Offset: m.Offset, Epoch: m.Epoch}
			}
			c.mu.Unlock()
		}
		if o.OnMessage != nil {
			o.OnMessage(*m)
		}
	case *UserJoined:
		if o.OnUserJoined != nil {
			o.OnUserJoined(*m)
		}
	case *UserLeft:
		if o.OnUserLeft != nil {
			o.OnUserLeft(*m)
		}
	case *Connected:
		c.mu.Lock()
		c.userID = m.UserID
		c.mu.Unlock()
		if o.OnConnected != nil {
			o.OnConnected(*m)
		}
	case *ServerError:
		if c.answerError(m) {
			return
		}
		if o.OnError != nil {
			o.OnError(m)
		}
	}
}

// answer completes the oldest pending call of kind with m.
func (c *Client) answer(kind string, m Msg) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cl := c.takeLocked(func(cl *call) bool { return cl.kind == kind }); cl != nil {
		cl.reply <- result{m: m}
	}
}

// answerError gives an error message to the call it answers, and reports
// whether there was one. The protocol does not tag replies, but the server
// answers a connection's requests in order, so an error belongs to the oldest
// waiting call that could have caused it. rate_limited answers every waiting
// call: the server drops what it receives during the ban, so none will get
// another reply. A rejoin's refusal forgets the room and goes to OnError.
func (c *Client) answerError(e *ServerError) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	switch e.Code {
	case CodeTokenExpired:
		c.expired = true
		return false
	case CodeMessagesDropped:
		return false
	case CodeRateLimited:
		if len(c.pending) == 0 {
			return false
		}
		c.failPendingLocked(e)
		return true
	}
	cl := c.takeLocked(func(cl *call) bool { return cl.answers(e.Code) })
	if cl == nil {
		return false
	}
	cl.reply <- result{err: e}
	if cl.rejoin {
		// A refused rejoin has no caller: the room is forgotten and the
		// handler hears why.
		delete(c.rooms, cl.room)
		delete(c.positions, cl.room)
		return false
	}
	return true
}

// takeLocked removes and returns the oldest pending call that match accepts.
func (c *Client) takeLocked(match func(*call) bool) *call {
	for i, cl := range c.pending {
		if match(cl) {
			c.pending = slices.Delete(c.pending, i, i+1)
			return cl
		}
	}
	return nil
}

// failPendingLocked answers every pending call with err.
func (c *Client) failPendingLocked(err error) {
	for _, cl := range c.pending {
		cl.reply <- result{err: err}
	}
	clear(c.pending)
	c.pending = c.pending[:0]
}

// setState records and announces a state change. Only run calls it, so
// handlers hear changes in order.
func (c *Client) setState(s State, cause error) {
	c.mu.Lock()
	c.state = s
	c.mu.Unlock()
	c.notifyState(s, cause)
}

func (c *Client) notifyState(s State, cause error) {
	if h := c.opts.OnState; h != nil {
		h(s, cause)
	}
}

// finish stops the client with err as the reason.
func (c *Client) finish(err error) {
	c.mu.Lock()
	c.state = StateClosed
	if c.err == nil {
		c.err = err
	}
	c.failPendingLocked(ErrClosed)
	c.mu.Unlock()
	c.log.Info("client stopped", "err", err)
	c.cancel() // stops the refresher
	c.notifyState(StateClosed, err)
}

// setTokenLocked installs a token and schedules its refresh.
func (c *Client) setTokenLocked(tok string) {
	c.token = tok
	c.tokenExp = tokenExpiry(tok)
	c.tokenLife = 0
	if !c.tokenExp.IsZero() {
		c.tokenLife = time.Until(c.tokenExp)
	}
	select {
	case c.tokenSet <- struct{}{}:
	default:
	}
}

// refresher refreshes the token ahead of its expiry for as long as the client
// runs. It does nothing without Options.RefreshToken.
func (c *Client) refresher() {
	defer c.wg.Done()
	if c.opts.RefreshToken == nil {
		return
	}
	// A hook that keeps handing out short tokens is asked at most once a
	// second.
	var last time.Time
	for {
		c.mu.Lock()
		exp, life := c.tokenExp, c.tokenLife
		c.mu.Unlock()
		var fire <-chan time.Time
		var t *time.Timer
		if !exp.IsZero() && time.Until(exp) > 0 {
			lead := c.opts.RefreshBefore
			if lead <= 0 {
				lead = min(DefaultRefreshBefore, life/10)
			}
			t = time.NewTimer(max(time.Until(exp.Add(-lead)), time.Second-time.Since(last)))
			fire = t.C
		}
		select {
		case <-c.ctx.Done():
			if t != nil {
				t.Stop()
			}
			return
		case <-c.tokenSet:
			if t != nil {
				t.Stop()
			}
			continue
		case <-fire:
		}
		last = time.Now()
		if err := c.refreshNow(); err != nil {
			c.log.Warn("token refresh failed", "err", err)
			// Try again shortly, unless the token runs out first; then the
			// server's token_expired brings a reconnect with a new token.
			t := time.NewTimer(time.Second)
			select {
			case <-c.ctx.Done():
				t.Stop()
				return
			case <-c.tokenSet:
				t.Stop()
			case <-t.C:
			}
		}
	}
}

// refreshNow gets a token from the hook and sends it.
func (c *Client) refreshNow() error {
	ctx, cancel := context.WithTimeout(c.ctx, refreshTimeout)
	defer cancel()
	tok, err := c.opts.RefreshToken(ctx)
	if err != nil {
		return fmt.Errorf("client: refresh token: %w", err)
	}
	return c.Refresh(ctx, tok)
}

// tokenExpiry reads a JWT's exp without verifying it: the client only needs to
// know when to refresh. Anything unreadable has no expiry.
func tokenExpiry(tok string) time.Time {
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return time.Time{}
	}
	payload, err := base64.RawURLEncoding.DecodeString(strings.TrimRight(parts[1], "="))
	if err != nil {
		return time.Time{}
	}
	var claims struct {
		Exp *json.Number `json:"exp"`
	}
	if json.Unmarshal(payload, &claims) != nil || claims.Exp == nil {
		return time.Time{}
	}
	f, err := claims.Exp.Float64()
	if err != nil || f <= 0 {
		return time.Time{}
	}
	return time.Unix(int64(f), 0)
}
