package web

import (
	"fmt"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"github.com/throng-ws/throng/chat"
)

// TestChatPage checks the chat page's details in headless Chromium: the ban
// countdown, the layout, the favicon, the member list, and two tabs of one
// user.
func TestChatPage(t *testing.T) {
	browser := newBrowser(t)

	t.Run("a ban says how long and holds the composer", func(t *testing.T) {
		s := newStack(t, stackConfig{auth: "dev", chat: func(h *chat.Handler) { h.Rate, h.Burst, h.Ban = 1, 3, 3*time.Second }})
		p := open(t, browser, s.URL+"/")
		p.joinRoom("Speedy", "fast")
		// The join and two messages spend the burst; the next is over it.
		// Sent from the page's own script, as a person's typing would be:
		// the ban may hold the composer between one message and the next.
		for i := range 4 {
			var held bool
			p.eval(fmt.Sprintf(`(() => {
				const m = document.getElementById("message"), b = document.getElementById("send");
				if (m.disabled || b.disabled) return true;
				m.value = "message %d"; b.click(); return false;
			})()`, i), &held)
			if held {
				break
			}
		}
		p.waitText("#banner", "the server ignores you for 3 seconds. You can send again in 0:0")
		p.wait(`document.getElementById("message").disabled && document.getElementById("send").disabled`, "the composer held")
		p.screenshot("chat-banned")
		// When the ban is over, the page lets the person write again.
		p.wait(`!document.getElementById("send").disabled && document.getElementById("banner").hidden`, "the ban over")
		p.say("back again")
		p.waitText("#messages", "back again")
	})

	t.Run("no empty band below the message box", func(t *testing.T) {
		s := newStack(t, stackConfig{auth: "dev", chat: func(h *chat.Handler) { h.Rate = -1 }})
		p := open(t, browser, s.URL+"/")
		p.joinRoom("Alice", "layout")
		var gap struct{ Composer, Page, List float64 }
		p.eval(`(() => {
			const card = document.getElementById("chat-panel").getBoundingClientRect();
			const form = document.getElementById("send-form").getBoundingClientRect();
			const list = document.getElementById("messages").getBoundingClientRect();
			return { Composer: card.bottom - form.bottom, Page: innerHeight - card.bottom, List: form.top - list.bottom };
		})()`, &gap)
		// The card's padding (20 px and its border) below the composer, the
		// page's (24 px) below the card, the gap (12 px) above the composer.
		if gap.Composer > 22 || gap.Page > 25 || gap.List > 13 || gap.Composer < 0 || gap.Page < 0 {
			t.Fatalf("empty space: %+v", gap)
		}
		// Many messages scroll inside the list; the page itself does not grow.
		for i := range 40 {
			p.run(chromedp.Evaluate(fmt.Sprintf(`document.getElementById("message").value = "line %d"; document.getElementById("send").click()`, i), nil))
		}
		p.waitText("#messages", "line 39")
		var fits bool
		p.eval(`document.documentElement.scrollHeight <= innerHeight + 1 && document.getElementById("messages").scrollHeight > document.getElementById("messages").clientHeight`, &fits)
		if !fits {
			t.Fatal("the page grew with the messages instead of the list scrolling")
		}
	})

	t.Run("favicon", func(t *testing.T) {
		s := newStack(t, stackConfig{auth: "dev"})
		p := open(t, browser, s.URL+"/")
		var icon struct {
			Href, Type string
			Status     int
		}
		p.eval(`(async () => {
			const l = document.querySelector('link[rel="icon"]');
			const r = await fetch(l.href);
			return { Href: l.getAttribute("href"), Type: r.headers.get("Content-Type"), Status: r.status };
		})()`, &icon)
		if icon.Href != "/favicon.svg" || icon.Status != 200 || icon.Type != "image/svg+xml" {
			t.Fatalf("favicon: %+v", icon)
		}
	})

	t.Run("member list, two tabs of one user, two users of one name", func(t *testing.T) {
		s := newStack(t, stackConfig{auth: "dev"})
		tab1 := open(t, browser, s.URL+"/")
		tab2 := open(t, browser, s.URL+"/")
		sam := open(t, browser, s.URL+"/")
		// The same dev user in both tabs, as one person with one token.
		for _, p := range []*page{tab1, tab2} {
			p.eval(`sessionStorage.setItem("throng.sub", "alice"), true`, nil)
			p.run(chromedp.Reload())
			p.wait(`document.body.dataset.ready === "true"`, "reloaded")
		}
		tab1.joinRoom("Alice", "crew")
		tab1.wait(`document.querySelector("#member-list li.me")?.innerText.includes("Alice")`, "herself in the list")
		tab2.joinRoom("Alice", "crew")
		for _, p := range []*page{tab1, tab2} {
			p.waitText("#member-list", "(you, 2 tabs)")
		}
		sam.joinRoom("Sam", "crew")
		var samID string
		sam.eval(`sessionStorage.getItem("throng.sub")`, &samID)
		tab1.waitText("#member-list", "Sam")
		tab1.waitText("#members", "3 members")

		// A message from tab 2 is not shown in tab 1 as if tab 1 had sent it.
		tab2.say("sent from the second tab")
		tab2.wait(`[...document.querySelectorAll("#messages li.msg.mine")].some((li) => li.innerText.includes("sent from the second tab"))`, "tab 2's own")
		tab1.wait(`[...document.querySelectorAll("#messages li.msg.twin")].some((li) => li.innerText.includes("you, in another tab") && li.innerText.includes("sent from the second tab"))`, "tab 2's in tab 1")
		tab1.wait(`document.querySelectorAll("#messages li.msg.mine").length === 0`, "nothing of tab 1's own")

		// Another user named Alice: the two are told apart by their ids.
		other := open(t, browser, s.URL+"/")
		other.joinRoom("Alice", "crew")
		var otherID string
		other.eval(`sessionStorage.getItem("throng.sub")`, &otherID)
		sam.waitText("#member-list", "(2 tabs, alice)")
		sam.waitText("#member-list", "("+otherID+")")
		tab1.screenshot("chat-members")

		// Leaving takes them out of everyone's list.
		other.run(chromedp.Click("#leave", chromedp.ByQuery))
		sam.wait(fmt.Sprintf(`!document.getElementById("member-list").innerText.includes(%s)`, js(otherID)), "the other Alice gone")
		tab2.run(chromedp.Click("#leave", chromedp.ByQuery))
		tab1.wait(`!document.getElementById("member-list").innerText.includes("2 tabs")`, "one tab left")
		tab1.waitText("#members", "2 members")
		if samID == "" {
			t.Fatal("no dev subject for Sam")
		}
	})
}
