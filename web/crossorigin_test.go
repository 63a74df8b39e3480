package web

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// The README's cross-origin import: a page on one origin imports /client.js
// from throng's HTTP listener on another, and connects with it. A copy of the
// library served without CORS headers, from the same listener, must fail to
// import, or the test would pass whatever the headers.
func TestBrowserCrossOriginImport(t *testing.T) {
	browser := newBrowser(t)
	s := newStack(t, stackConfig{auth: "dev", routes: map[string]http.Handler{
		"GET /no-cors/client.js": http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			f, err := static.Open("static/client.js")
			if err != nil {
				http.Error(w, err.Error(), 500)
				return
			}
			defer f.Close()
			w.Header().Set("Content-Type", "text/javascript; charset=utf-8")
			io.Copy(w, f)
		}),
	}})

	// The other origin: another loopback address, so another host, not only
	// another port.
	page := fmt.Sprintf(`<!doctype html>
<meta charset="utf-8">
<title>another site</title>
<script type="module">
window.importFrom = async (url) => {
  try { await import(url); return "ok"; } catch (e) { return "failed: " + e.message; }
};
window.chatVia = async (url, wsUrl, token) => {
  const { WebSocketClient } = await import(url);
  const c = new WebSocketClient(wsUrl, token);
  const joined = new Promise((resolve) => { c.onJoined = (d) => resolve(d); });
  await c.connect();
  c.join("elsewhere", "Remote");
  const d = await joined;
  c.disconnect();
  return { user: c.userId, room: d.roomId, count: d.userCount, origin: location.origin };
};
document.body.dataset.ready = "true";
</script>
<body></body>`)
	ln, err := net.Listen("tcp", "127.0.0.2:0")
	if err != nil {
		t.Skipf("cannot listen on 127.0.0.2: %v", err)
	}
	other := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		io.WriteString(w, page)
	}))
	other.Listener.Close()
	other.Listener = ln
	other.Start()
	t.Cleanup(other.Close)
	if !browserSafe(ln.Addr()) {
		t.Skip("the other origin landed on a port Chromium refuses")
	}

	p := open(t, browser, other.URL+"/")
	var res string
	p.eval(fmt.Sprintf(`importFrom(%s)`, js(s.URL+"/no-cors/client.js")), &res)
	if res == "ok" {
		t.Fatal("a module without CORS headers imported across origins: the test cannot tell")
	}

	var got struct {
		User, Room, Origin string
		Count              int
	}
	p.eval(fmt.Sprintf(`chatVia(%s, %s, %s)`, js(s.URL+"/client.js"), js(s.wsURL()), js(s.token(t, "remote", time.Hour))), &got)
	if got.User != "remote" || got.Room != "elsewhere" || got.Count != 1 || got.Origin != other.URL {
		t.Fatalf("cross-origin client: %+v (page %s, library %s)", got, other.URL, s.URL)
	}
}
