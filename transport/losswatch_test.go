package transport

import (
	"testing"

	"github.com/pqtunnel/pqtunnel/internal/defaults"
)

// bedSeconds are one QUIC stream's packets sent and declared lost in each
// second of a bulk upload over the WAN test bed (integration/wan, 200
// Mbit/s with a 50 ms queue), by RTT and random loss, 2026-12-02.
var bedSeconds = map[string][][2]uint64{
	"20ms, 0":          {{17623, 93}, {17043, 0}, {12900, 90}, {17062, 0}, {15142, 0}, {17056, 0}, {15248, 0}, {12275, 166}, {4479, 24}, {4223, 0}, {14087, 0}, {16030, 0}, {15541, 0}, {13677, 0}, {15786, 0}},
	"20ms, 0 (2)":      {{16276, 0}, {17141, 0}, {16861, 0}, {17013, 0}, {16984, 0}, {17074, 0}, {17029, 0}, {15371, 88}, {17139, 0}, {3181, 43}},
	"80ms, 0":          {{12399, 919}, {16513, 103}, {17039, 0}, {17078, 0}, {13537, 14}, {12122, 0}, {5759, 164}, {2683, 0}, {2590, 0}, {1545, 6}, {1163, 0}, {411, 0}, {868, 0}, {827, 0}, {848, 0}},
	"200ms, 0":         {{363, 0}, {886, 0}, {998, 0}, {467, 0}, {380, 0}, {634, 0}, {502, 0}, {1799, 0}, {1359, 0}, {618, 0}, {807, 0}, {326, 0}, {501, 0}, {534, 0}, {1211, 0}},
	"20ms, 0.1 %":      {{7340, 4}, {3033, 3}, {2096, 2}, {2923, 2}, {2229, 0}, {2658, 3}, {2557, 0}, {2963, 2}, {2713, 2}, {2180, 3}, {2142, 3}, {1810, 1}, {1951, 3}, {1901, 2}, {2038, 2}},
	"80ms, 0.1 %":      {{2103, 3}, {1620, 1}, {1225, 1}, {1056, 1}, {673, 2}, {607, 1}, {436, 0}, {635, 0}, {529, 0}, {739, 2}, {514, 0}, {657, 0}, {625, 0}, {817, 1}, {528, 1}},
	"80ms, 1 %":        {{809, 6}, {220, 4}, {151, 2}, {171, 2}, {185, 1}, {221, 2}, {227, 1}, {236, 2}, {204, 3}, {122, 2}, {161, 2}, {140, 3}, {203, 0}, {333, 0}, {382, 1}},
	"idle, 1 %":        {{3, 0}, {2, 1}, {3, 0}, {2, 0}, {3, 1}, {2, 0}, {3, 0}, {2, 1}, {3, 0}, {2, 0}, {3, 1}, {2, 0}},
	"one burst":        {{5000, 0}, {5000, 0}, {5000, 400}, {5000, 0}, {5000, 0}, {5000, 0}, {5000, 0}, {5000, 0}, {5000, 0}, {5000, 0}, {5000, 0}},
	"burst, then idle": {{4, 0}, {4, 0}, {4, 0}, {4, 0}, {4, 0}, {4, 0}, {4, 0}, {4, 0}, {4, 0}, {4, 0}, {4601, 32}},
	"undone loss":      {{3000, 0}, {3000, 30}, {3000, 0}, {3000, 0}, {3000, 0}, {3000, 0}, {3000, 0}, {3000, 0}, {3000, 0}, {3000, 0}, {3000, 0}},
	"0.025 % spread":   {{4000, 1}, {4000, 1}, {4000, 1}, {4000, 1}, {4000, 1}, {4000, 1}, {4000, 1}, {4000, 1}, {4000, 1}, {4000, 1}, {4000, 1}, {4000, 1}},
}

// TestLossWatchTellsRandomLossFromCongestion replays the bed's samples in
// either direction: the clean paths' congestion bursts never make the
// watch move, random loss of 0.1 % and more does within the window.
func TestLossWatchTellsRandomLossFromCongestion(t *testing.T) {
	for _, tc := range []struct {
		name  string
		lossy bool
	}{
		{"20ms, 0", false}, {"20ms, 0 (2)", false}, {"80ms, 0", false}, {"200ms, 0", false},
		{"20ms, 0.1 %", true}, {"80ms, 0.1 %", true}, {"80ms, 1 %", true},
		{"idle, 1 %", false}, {"one burst", false}, {"burst, then idle", false}, {"undone loss", false}, {"0.025 % spread", false},
	} {
		for _, received := range []bool{false, true} {
			name := tc.name
			if received {
				name += ", received"
			}
			t.Run(name, func(t *testing.T) {
				w := newLossWatch(defaults.FallbackLoss / 100)
				var st Stats
				lossyAt := 0
				for i, s := range bedSeconds[tc.name] {
					sent, lost := &st.PacketsSent, &st.PacketsLost
					if received {
						sent, lost = &st.PeerPacketsSent, &st.PeerPacketsLost
					}
					*sent += s[0]
					*lost += s[1]
					if tc.name == "undone loss" && i == 3 {
						*lost -= 30 // the lost packets were acknowledged after all
					}
					st.PacketsSent += 10 // this side's acknowledgements
					v := w.observe(st)
					if v.Lossy && lossyAt == 0 {
						lossyAt = i
						if want := map[bool]string{false: "sent", true: "received"}[received]; v.Direction != want {
							t.Errorf("lossy in direction %q, want %q", v.Direction, want)
						}
						if v.Rate() < defaults.FallbackLoss/100 || v.Lost < lossMinLost {
							t.Errorf("lossy at %.3f %% (%d lost)", v.Rate()*100, v.Lost)
						}
					}
				}
				switch {
				case tc.lossy && lossyAt == 0:
					t.Error("never judged lossy")
				case !tc.lossy && lossyAt > 0:
					t.Errorf("judged lossy after %d s", lossyAt)
				case tc.lossy && lossyAt > 14:
					t.Errorf("judged lossy only after %d s", lossyAt)
				}
			})
		}
	}
}

// A threshold above the path's loss keeps the watch quiet.
func TestLossWatchThreshold(t *testing.T) {
	w := newLossWatch(0.05)
	var st Stats
	for _, s := range bedSeconds["80ms, 1 %"] {
		st.PacketsSent += s[0]
		st.PacketsLost += s[1]
		if v := w.observe(st); v.Lossy {
			t.Fatalf("lossy at %.2f %% with a 5 %% threshold", v.Rate()*100)
		}
	}
}
