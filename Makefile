# make test: installs what the tests start (scripts/test-deps), checks
# formatting, vet and staticcheck, runs every test with the race detector,
# each fuzz target for FUZZTIME against its committed corpus, and a 20-second
# run of the benchmark harness and a 75-second run of its WAN mode (network
# namespaces; skipped with a message when not root) that check they still work.
# make demo: the built-in demo. make bench: the full harness.
#
# pqtunnel needs Go 1.27. GOTOOLCHAIN makes the go command fetch that
# toolchain from the module proxy once (about 76 MB) when the installed Go is
# older or when the environment says GOTOOLCHAIN=local.
export GOTOOLCHAIN := go1.27.3

# FUZZTIME is a count of executions, not a duration, so that a slow machine
# runs the same work; 100000 executions take 5-15 s per target here.
FUZZTIME ?= 100000x
# Every package with a fuzz target is fuzzed; none is listed by hand.
FUZZ_PKGS = $(shell go list ./... | grep -v /integration)
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2

# The platforms pqtunnel ships for. Its packages build and vet on each; the
# test suites (integration/, examples/) start processes and send them Unix
# signals, so they are vetted on Linux and macOS only.
PLATFORMS := linux/amd64 linux/arm64 darwin/amd64 darwin/arm64 windows/amd64 windows/arm64
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo devel)

.PHONY: test deps lint cross unit fuzz bench bench-smoke build release demo

test: deps lint cross unit fuzz bench-smoke

deps:
	@scripts/test-deps

lint:
	@out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	go vet ./...
	go run $(STATICCHECK) ./...

cross:
	@set -e; for p in $(PLATFORMS); do \
	  os=$${p%/*}; arch=$${p#*/}; echo "build and vet $$os/$$arch"; \
	  GOOS=$$os GOARCH=$$arch CGO_ENABLED=0 go build -o /dev/null ./cmd/pqtunnel; \
	  GOOS=$$os GOARCH=$$arch CGO_ENABLED=0 go vet ./...; \
	done

demo:
	go run ./cmd/pqtunnel demo

# The browser test of /status leaves its screenshot in test-artifacts/.
# third_party/quic-go is a module of its own, outside ./...: its congestion
# control and loss recovery tests run too, the patched code among them.
unit:
	TEST_ARTIFACTS_DIR=$(CURDIR)/test-artifacts go test -race -count=1 -timeout 30m ./...
	cd third_party/quic-go && go test -race -count=1 -timeout 5m ./internal/congestion/ ./internal/ackhandler/

fuzz:
	@set -e; for pkg in $(FUZZ_PKGS); do \
	  for f in $$(go test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f for $(FUZZTIME)"; \
	    go test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) -timeout=5m $$pkg; \
	  done; \
	done

bench:
	go run ./integration/bench

bench-smoke:
	go run ./integration/bench -smoke -out "$$(mktemp -d)/bench-smoke.json"
	go run ./integration/bench -wan -smoke -out "$$(mktemp -d)/bench-wan-smoke.json"

# -buildvcs=auto stamps the commit that 'pqtunnel version' prints, even
# where GOFLAGS says -buildvcs=false.
build:
	CGO_ENABLED=0 go build -trimpath -buildvcs=auto -ldflags="-s -w" -o bin/pqtunnel ./cmd/pqtunnel

# release: one static binary per platform in dist/, named with VERSION (git
# describe), and SHA256SUMS over them. 'pqtunnel version' reads the commit and
# its date from the binary's build information.
release:
	@set -e; rm -rf dist; mkdir -p dist; for p in $(PLATFORMS); do \
	  os=$${p%/*}; arch=$${p#*/}; ext=; [ $$os = windows ] && ext=.exe; \
	  out=dist/pqtunnel-$(VERSION)-$$os-$$arch$$ext; echo "build $$out"; \
	  GOOS=$$os GOARCH=$$arch CGO_ENABLED=0 go build -trimpath -buildvcs=auto -ldflags="-s -w" -o $$out ./cmd/pqtunnel; \
	done; cd dist && sha256sum pqtunnel-* > SHA256SUMS && cat SHA256SUMS
