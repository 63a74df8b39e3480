# throng: `make run` starts a dev server, `make test` checks everything.
GO ?= go
BIN := bin/throng

.PHONY: build run test bench fuzz clean

build:
	$(GO) build -o $(BIN) ./cmd/throng

# A dev server: a random JWT secret, and a ready ws:// URL with a token printed.
run: build
	./$(BIN) serve --dev

test:
	$(GO) vet ./...
	$(GO) test -race -shuffle=on -count=1 ./...

# Each fuzz target for a short while; longer runs: FUZZTIME=10m make fuzz.
FUZZTIME ?= 20s
fuzz:
	@for t in $$($(GO) test -list '^Fuzz' ./server/ | grep ^Fuzz); do \
		$(GO) test -run '^$$' -fuzz "^$$t$$" -fuzztime $(FUZZTIME) ./server/ || exit 1; \
	done

clean:
	rm -rf bin
