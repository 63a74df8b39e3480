# throng: `make run` starts a dev server, `make test` checks everything.
GO ?= go
BIN := bin/throng

.PHONY: build run run-cluster test autobahn bench fuzz clean

build:
	$(GO) build -o $(BIN) ./cmd/throng

# A dev server: a random JWT secret, and a ready ws:// URL with a token printed.
run: build
	./$(BIN) serve --dev

# nats-server for run-cluster, built from the Go module proxy into bin/.
NATS_SERVER_VERSION ?= v2.15.2
NATS_SERVER := bin/nats-server
# One dev secret and API key for every node, so a token from one works on all.
CLUSTER_SECRET ?= throng-dev-cluster-secret-not-for-production
CLUSTER_API_KEY ?= throng-dev

$(NATS_SERVER):
	GOBIN=$(CURDIR)/bin $(GO) install github.com/nats-io/nats-server/v2@$(NATS_SERVER_VERSION)

# A local cluster: nats-server with JetStream (the rooms' history, stored in
# bin/jetstream) on 127.0.0.1:4222 and three dev nodes on it, ws
# 8080/8180/8280 and http 8081/8181/8281. Ctrl-C stops the nodes first (they
# drain and leave the cluster), then the broker, which runs in a session of its
# own so the terminal's Ctrl-C does not reach it before them.
run-cluster: build $(NATS_SERVER)
	@nodes=""; \
	setsid ./$(NATS_SERVER) -a 127.0.0.1 -p 4222 -js -sd $(CURDIR)/bin/jetstream & broker=$$!; \
	trap 'kill $$nodes 2>/dev/null; wait $$nodes 2>/dev/null; kill $$broker 2>/dev/null; wait $$broker 2>/dev/null' EXIT INT TERM; \
	for i in 0 1 2; do \
		./$(BIN) serve --dev --jwt-secret $(CLUSTER_SECRET) --api-key $(CLUSTER_API_KEY) \
			--nats nats://127.0.0.1:4222 --node-id node$$i \
			--ws-addr 127.0.0.1:8$${i}80 --http-addr 127.0.0.1:8$${i}81 & nodes="$$nodes $$!"; \
	done; \
	wait $$nodes

test:
	$(GO) vet ./...
	GOOS=darwin $(GO) build ./...
	GOOS=freebsd $(GO) build ./...
	$(GO) test -race -shuffle=on -count=1 ./...
	$(MAKE) autobahn

# Autobahn|Testsuite's cases 1-10 and a subset of the compression cases 12 and
# 13 against /echo on both backends, compression on; 0 FAILED or
# it fails (scripts/autobahn.sh says what it needs, and skips without it
# unless AUTOBAHN_REQUIRED=1, as in CI).
autobahn:
	scripts/autobahn.sh

# A short side-by-side of the floor (bench/peers/floor: the same I/O with no
# WebSocket work), throng (epoll and netpoll) and the gorilla and nbio peers,
# under 6 minutes; echo and broadcast quote every target's CPU and latency as
# ratios to the floor's. Results in bench-out/ (not committed). The full runs
# and their figures are in docs/BENCHMARKS.md.
BENCH_SECRET ?= 0123456789abcdef0123456789abcdef
bench: build
	$(GO) build -o bin/gorilla-peer ./bench/peers/gorilla
	$(GO) build -o bin/nbio-peer ./bench/peers/nbio
	$(GO) build -o bin/floor-peer ./bench/peers/floor
	mkdir -p bench-out
	set -e; \
	./$(BIN) serve --endpoints ws,echo,shootout --jwt-secret $(BENCH_SECRET) --ws-addr 127.0.0.1:18080 --http-addr 127.0.0.1:18081 --log-level warn --rate -1 & t=$$!; \
	./$(BIN) serve --endpoints ws,echo,shootout --poller netpoll --jwt-secret $(BENCH_SECRET) --ws-addr 127.0.0.1:18082 --http-addr 127.0.0.1:18083 --log-level warn --rate -1 & n=$$!; \
	bin/gorilla-peer --addr 127.0.0.1:18090 & g=$$!; \
	bin/nbio-peer --addr 127.0.0.1:18091 2>/dev/null & b=$$!; \
	bin/floor-peer --addr 127.0.0.1:18092 2>/dev/null & f=$$!; \
	trap 'kill $$t $$n $$g $$b $$f' EXIT; sleep 1; \
	T="--target floor=ws://127.0.0.1:18092,pid=$$f --target throng=ws://127.0.0.1:18080,pid=$$t --target throng-netpoll=ws://127.0.0.1:18082,pid=$$n --target gorilla=ws://127.0.0.1:18090,pid=$$g --target nbio=ws://127.0.0.1:18091,pid=$$b"; \
	./$(BIN) bench idle $$T --jwt-secret $(BENCH_SECRET) --conns 10000 --rate 5000 --hold 5s --source-ips 127.0.0.2-127.0.0.50 --quiet --json bench-out/idle.json --report bench-out/idle.html; \
	./$(BIN) bench echo $$T --jwt-secret $(BENCH_SECRET) --conns 100 --inflight 1 --duration 10s --quiet --json bench-out/echo-inflight1.json --report bench-out/echo-inflight1.html; \
	./$(BIN) bench echo $$T --jwt-secret $(BENCH_SECRET) --conns 100 --inflight 4 --duration 10s --quiet --json bench-out/echo.json --report bench-out/echo.html; \
	./$(BIN) bench broadcast $$T --jwt-secret $(BENCH_SECRET) --step-size 1000 --max-clients 5000 -c 4 -s 40 --quiet --json bench-out/broadcast.json --report bench-out/broadcast.html; \
	./$(BIN) bench reconnect-storm $$T --jwt-secret $(BENCH_SECRET) --conns 10000 --source-ips 127.0.0.2-127.0.0.50 --quiet --json bench-out/storm.json --report bench-out/storm.html

# Each fuzz target for a short while; longer runs: FUZZTIME=10m make fuzz.
FUZZTIME ?= 20s
fuzz:
	@for p in ./server/ ./wsframe/ ./bench/; do \
		for t in $$($(GO) test -list '^Fuzz' $$p | grep ^Fuzz | sort -u); do \
			$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) $$p || exit 1; \
		done; \
	done

clean:
	rm -rf bin
