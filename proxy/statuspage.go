package proxy

import (
	_ "embed"
	"encoding/json"
	"net/http"
)

// statusPage is the /status page: it fetches /status.json every few seconds
// and draws it, with a sparkline of each tunnel's traffic history. It loads
// nothing from elsewhere and works offline.
//
//go:embed statuspage/status.html
var statusPage []byte

// statusRoutes adds /status and /status.json to h.
func (e *Engine) statusRoutes(h *http.ServeMux) {
	h.HandleFunc("GET /status.json", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(e.Status()) // the client went away
	})
	h.HandleFunc("GET /status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/html; charset=utf-8")
		w.Header().Set("Cache-Control", "no-store")
		// The page runs only its own inline script and talks only to us.
		w.Header().Set("Content-Security-Policy", "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:")
		_, _ = w.Write(statusPage) // the client went away
	})
}
