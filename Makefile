# make test: every test with the race detector, each fuzz target for
# FUZZTIME against its committed corpus, and a 20-second run of the benchmark
# harness that checks it still works. make bench: the full harness.
#
# FUZZTIME is a count of executions, not a duration: Go 1.26's fuzz
# coordinator can report a spurious "context deadline exceeded" failure when a
# wall-clock -fuzztime expires (go.dev/issue/75804, fixed in Go 1.27). 100000
# executions take 5-15 s per target here.
FUZZTIME ?= 100000x
FUZZ_PKGS := ./hybridtls ./proxy

.PHONY: test unit fuzz bench bench-smoke build

test: unit fuzz bench-smoke

unit:
	go test -race -count=1 ./...

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

build:
	CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o bin/pqtunnel ./cmd/pqtunnel
