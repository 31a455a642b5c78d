package proxy

import (
	"strings"
	"testing"
)

// On Windows a unix:// route names its socket by a drive-letter path; a
// Unix-style path is not absolute there, and a network share is refused.
func TestParseUnixRoutesWindows(t *testing.T) {
	tests := []struct {
		in, want, wantErr string
	}{
		{in: `app=unix://C:\ProgramData\pqtunnel\app.sock`, want: `C:\ProgramData\pqtunnel\app.sock`},
		{in: `app=unix://C:/ProgramData/pqtunnel/app.sock@web`, want: `C:/ProgramData/pqtunnel/app.sock`},
		{in: `app=unix:///run/app.sock`, wantErr: `unix://C:\absolute\path`},
		{in: `app=unix://\\server\share\app.sock`, wantErr: `unix://C:\absolute\path`},
		{in: `app=unix://app.sock`, wantErr: `unix://C:\absolute\path`},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			rs, err := ParseRoutes(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("ParseRoutes(%q) = %v, %v; want an error with %q", tt.in, rs, err, tt.wantErr)
				}
				return
			}
			if err != nil || len(rs) != 1 || !rs[0].IsUnix() || rs[0].Addr != tt.want {
				t.Fatalf("ParseRoutes(%q) = %v, %v; want one unix route at %s", tt.in, rs, err, tt.want)
			}
		})
	}
}
