# make test: every test with the race detector, then each fuzz target for
# FUZZTIME against its committed corpus. make bench: the benchmark harness.
FUZZTIME ?= 10s
FUZZ_PKGS := ./hybridtls ./proxy

.PHONY: test unit fuzz bench build

test: unit fuzz

unit:
	go test -race -count=1 ./...

fuzz:
	@set -e; for pkg in $(FUZZ_PKGS); do \
	  for f in $$(go test -list '^Fuzz' $$pkg | grep '^Fuzz'); do \
	    echo "fuzz $$pkg $$f for $(FUZZTIME)"; \
	    go test -run='^$$' -fuzz="^$$f$$" -fuzztime=$(FUZZTIME) $$pkg; \
	  done; \
	done

bench:
	go run ./integration/bench

build:
	CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o bin/pqtunnel ./cmd/pqtunnel
