module github.com/pqtunnel/pqtunnel

go 1.26.0

require (
	github.com/caarlos0/env/v11 v11.4.2
	github.com/cloudflare/circl v1.6.5
	github.com/hashicorp/yamux v0.1.2
	github.com/lmittmann/tint v1.2.1
	github.com/quic-go/quic-go v0.65.0
)

require (
	golang.org/x/crypto v0.54.0 // indirect
	golang.org/x/net v0.56.0 // indirect
	golang.org/x/sys v0.47.0 // indirect
)
