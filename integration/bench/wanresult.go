package main

import "time"

// modeAuto is a dial side on PQT_TRANSPORT=auto.
const modeAuto = "auto"

// directCC is the mode of direct TCP with congestion control cc set on
// the sending socket.
func directCC(cc string) string { return modeDirect + "_" + cc }

// WANResult is a WAN run, as written to the JSON file.
type WANResult struct {
	Meta      WANMeta         `json:"meta"`
	Cells     []WANCellResult `json:"cells"`
	Blackhole []BlackholeMode `json:"udp_blackhole,omitempty"`
	// AutoStart is a dial side on auto started while UDP is blackholed.
	AutoStart *AutoStart `json:"auto_start_udp_blackholed,omitempty"`
	// Targets are the WAN goals checked against this run (checkWANTargets).
	Targets []Target `json:"targets"`
	Errors  []string `json:"errors"`
}

// WANMeta says how the WAN run was made.
type WANMeta struct {
	Started       time.Time `json:"started"`
	Seconds       float64   `json:"seconds"`
	Smoke         bool      `json:"smoke"`
	RateMbit      float64   `json:"rate_mbit"`
	QueueBytes    int       `json:"queue_bytes"`
	BulkWindow    string    `json:"bulk_window"`
	Warmup        string    `json:"warmup"`
	DefaultCC     string    `json:"kernel_default_congestion_control"`
	AvailableCC   []string  `json:"available_congestion_control"`
	Go            string    `json:"go"`
	CPUs          int       `json:"cpus"`
	LoadStart     string    `json:"loadavg_start"`
	LoadEnd       string    `json:"loadavg_end"`
	BlackholeTime string    `json:"udp_blackhole_duration,omitempty"`
	AutoSettle    string    `json:"auto_settle,omitempty"`
	Notes         []string  `json:"notes"`
}

// WANCellResult is what was measured over one link.
type WANCellResult struct {
	Cell    string   `json:"cell"`
	RTTms   float64  `json:"rtt_ms"`
	Loss    float64  `json:"loss"`
	Figures []Figure `json:"figures"`
	// EmulatorCPU is the link emulator's CPU seconds over the cell, and
	// EmulatorCore that over the cell's wall time (1 = one core busy).
	EmulatorCPU  float64      `json:"emulator_cpu_seconds"`
	EmulatorCore float64      `json:"emulator_cores"`
	EmulatorGB   float64      `json:"emulator_gb_moved"`
	Seconds      float64      `json:"seconds"`
	Link         [2]LinkStats `json:"link"`
}

// LinkStats are one direction's counters over a cell.
type LinkStats struct {
	Dir          string `json:"dir"`
	Packets      uint64 `json:"packets"`
	DroppedLoss  uint64 `json:"dropped_loss"`
	DroppedQueue uint64 `json:"dropped_queue"`
	MaxQueue     int64  `json:"max_queue_bytes"`
}

// BlackholeMode is one dial side through a UDP blackhole of both directions.
type BlackholeMode struct {
	Mode string `json:"mode"`
	// During lists the clients that arrived during the blackhole: what each
	// got and after how long.
	During []ClientOutcome `json:"during"`
	// RecoverySeconds is from the end of the blackhole to the first new
	// client answered; negative if none was within the bound.
	RecoverySeconds float64 `json:"recovery_seconds"`
	Error           string  `json:"error,omitempty"`
}

// AutoStart is how long a dial side on PQT_TRANSPORT=auto, started while
// UDP is blackholed, took from its start until a tunnel was up, and over
// which transport.
type AutoStart struct {
	Seconds   float64 `json:"seconds"`
	Transport string  `json:"transport"`
	Error     string  `json:"error,omitempty"`
}

// ClientOutcome is one client's connect + 1-byte echo.
type ClientOutcome struct {
	AtSeconds float64 `json:"at_seconds"`
	Answered  bool    `json:"answered"`
	Seconds   float64 `json:"seconds"`
	Error     string  `json:"error,omitempty"`
}
