package client

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// ChatConfig configures RunChat.
type ChatConfig struct {
	// URL is the server's /ws URL.
	URL string
	// Room is the room to join.
	Room string
	// Name is the name shown to the room. If empty, the user id is used.
	Name string
	// Options are passed to Dial. Their handlers are replaced by RunChat's,
	// except OnState, which is still called after RunChat's own.
	Options Options
	// In is read line by line; each non-empty line is sent to the room.
	In io.Reader
	// Out receives the room's events, one line each.
	Out io.Writer
	// SendTimeout bounds each line's send. If zero, 5s is used.
	SendTimeout time.Duration
	// Linger is how long RunChat waits at the end of In for the replies to
	// what it sent, so that an error for the last line is printed. If zero,
	// DefaultLinger is used.
	Linger time.Duration
}

// DefaultLinger is ChatConfig.Linger's default.
const DefaultLinger = 2 * time.Second

// RunChat is `throng client`: it joins a room and pipes In to it and the room
// to Out, until In ends (it then leaves the room and returns nil), ctx is
// canceled (nil), or the client stops for good (its Err). The goroutine reading
// In ends when In does; for os.Stdin that is when the process exits.
func RunChat(ctx context.Context, cfg ChatConfig) error {
	if cfg.Room == "" {
		return fmt.Errorf("%w: a room is required", ErrInvalid)
	}
	timeout := cfg.SendTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	out := &lineWriter{w: cfg.Out}
	room := cfg.Room
	o := cfg.Options
	if o.History == 0 {
		o.History = 20 // context on join, as a chat window shows
	}
	userState := o.OnState
	o.OnConnected = nil
	o.OnLeft = nil
	o.OnJoined = func(j Joined) {
		if j.RoomID != room {
			return
		}
		out.printf("* joined %s (%s)", room, here(j.UserCount))
		switch {
		case j.Recovered == nil:
		case *j.Recovered:
			out.printf("* recovered %d messages", j.Replayed)
		default:
			out.printf("! some messages may be missing")
		}
	}
	o.OnMessage = func(m Message) {
		if m.RoomID == room {
			out.printf("[%s] %s: %s", m.Timestamp.Local().Format("15:04:05"), m.UserName, m.Content)
		}
	}
	o.OnUserJoined = func(u UserJoined) {
		if u.RoomID == room {
			out.printf("* %s joined (%s)", u.UserName, here(u.UserCount))
		}
	}
	o.OnUserLeft = func(u UserLeft) {
		if u.RoomID == room {
			out.printf("* %s left (%s)", u.UserName, here(u.UserCount))
		}
	}
	o.OnError = func(e *ServerError) { out.printf("! %s: %s", e.Code, e.Message) }
	o.OnState = func(s State, cause error) {
		switch s {
		case StateReconnecting:
			out.printf("! disconnected (%v); reconnecting", describe(cause))
		case StateOpen:
			out.printf("* connected")
		case StateClosed:
			if !errors.Is(cause, ErrClosed) {
				out.printf("! stopped: %v", describe(cause))
			}
		}
		if userState != nil {
			userState(s, cause)
		}
	}

	c, err := Dial(ctx, cfg.URL, o)
	if err != nil {
		return err
	}
	defer c.Close()
	name := cfg.Name
	if name == "" {
		name = c.UserID()
	}
	jctx, cancel := context.WithTimeout(ctx, timeout)
	_, err = c.Join(jctx, room, name)
	cancel()
	if err != nil {
		return fmt.Errorf("join %s: %w", room, err)
	}

	lines := make(chan string)
	readDone := make(chan error, 1)
	go func() {
		sc := bufio.NewScanner(cfg.In)
		for sc.Scan() {
			select {
			case lines <- sc.Text():
			case <-c.Done():
				readDone <- nil
				return
			}
		}
		readDone <- sc.Err()
	}()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-c.Done():
			return c.Err()
		case err := <-readDone:
			// The server answers a connection's messages in order, so once a
			// ping's pong is back, so is the error (if any) for the last line
			// sent, and it has been printed. A banned connection's ping is
			// ignored: the wait is bounded.
			pctx, cancel := context.WithTimeout(ctx, cmp.Or(cfg.Linger, DefaultLinger))
			c.Ping(pctx)
			cancel()
			lctx, cancel := context.WithTimeout(context.Background(), timeout)
			c.Leave(lctx, room)
			cancel()
			return err
		case line := <-lines:
			line = strings.TrimSpace(line)
			if line == "" {
				continue
			}
			sctx, cancel := context.WithTimeout(ctx, timeout)
			err := c.Send(sctx, room, line)
			cancel()
			if err != nil {
				out.printf("! not sent: %v", describe(err))
			}
		}
	}
}

func here(n int) string {
	if n == 1 {
		return "1 here"
	}
	return fmt.Sprintf("%d here", n)
}

// describe shortens the client's errors for a person.
func describe(err error) string {
	var ce *CloseError
	switch {
	case err == nil:
		return "no reason"
	case errors.As(err, &ce):
		if ce.Reason == "" {
			return fmt.Sprint("close ", ce.Code)
		}
		return fmt.Sprintf("close %d: %s", ce.Code, ce.Reason)
	}
	return strings.TrimPrefix(err.Error(), "client: ")
}

// lineWriter writes whole lines from any goroutine.
type lineWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lineWriter) printf(format string, args ...any) {
	l.mu.Lock()
	defer l.mu.Unlock()
	fmt.Fprintf(l.w, format+"\n", args...)
}
