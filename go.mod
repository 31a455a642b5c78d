module github.com/pqtunnel/pqtunnel

go 1.27.3

require (
	github.com/caarlos0/env/v11 v11.4.2
	github.com/hbollon/go-edlib v1.7.0
	github.com/libp2p/go-yamux/v5 v5.1.0
	github.com/lmittmann/tint v1.2.1
	github.com/pires/go-proxyproto v0.15.0
	github.com/prometheus/client_golang v1.23.2
	github.com/quic-go/quic-go v0.65.0
	go.uber.org/goleak v1.3.0
	go.yaml.in/yaml/v2 v2.4.2
	golang.org/x/sys v0.47.0
)

require (
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/kr/text v0.2.0 // indirect
	github.com/libp2p/go-buffer-pool v0.0.2 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/prometheus/client_model v0.6.2 // indirect
	github.com/prometheus/common v0.66.1 // indirect
	github.com/prometheus/procfs v0.16.1 // indirect
	golang.org/x/crypto v0.54.0 // indirect
	golang.org/x/net v0.56.0 // indirect
	google.golang.org/protobuf v1.36.8 // indirect
)

replace github.com/quic-go/quic-go => ./third_party/quic-go
