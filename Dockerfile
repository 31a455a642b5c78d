# pqtunnel container image: one static binary on distroless, running as the
# image's non-root user, configured only by PQT_* environment variables.
#
#   docker build -t pqtunnel .
#   docker run --rm pqtunnel help        # every PQT_* variable with its default
#
# The tunnel port is whatever PQT_TUNNEL says; 8443 is the convention used in
# the examples, and a listen side serves QUIC (UDP) and TLS/TCP on the same
# port number, so publish both: -p 8443:8443/udp -p 8443:8443/tcp.
# The image has no shell: readiness is checked over HTTP on PQT_METRICS
# (/readyz) from outside the container, not with a HEALTHCHECK command.

FROM golang:1.27-bookworm AS build
WORKDIR /src
# Dependencies first, so that a source change does not download them again.
# go.mod replaces quic-go with the patched copy in third_party/quic-go.
COPY go.mod go.sum ./
COPY third_party/ third_party/
RUN go mod download
COPY . .
RUN CGO_ENABLED=0 go build -trimpath -ldflags="-s -w" -o /out/pqtunnel ./cmd/pqtunnel

FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=build /out/pqtunnel /pqtunnel
# uid/gid 65532: identity files mounted into the container must be readable
# by this user and not by group or others (mode 0600 or 0400).
USER nonroot:nonroot
EXPOSE 8443/udp 8443/tcp
ENTRYPOINT ["/pqtunnel"]
