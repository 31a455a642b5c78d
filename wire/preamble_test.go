package wire

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestRequestRoundTrip(t *testing.T) {
	tests := []Request{
		{},
		{Route: "redis", Client: "127.0.0.1:50123", Server: "127.0.0.1:6379"},
		{Client: "[::1]:443"},
		{Route: "ünïcode", Client: "x"},
		{Route: strings.Repeat("r", 255), Client: strings.Repeat("c", 255), Server: strings.Repeat("s", 255)},
		{Kind: 7, Route: "unix", Extensions: []Extension{{Type: 1, Value: []byte("v")}, {Type: 200, Value: []byte{}}}},
		{Kind: KindRouteQuery, Route: "pg"},
	}
	for _, want := range tests {
		enc, err := AppendRequest([]byte("prefix"), want)
		if err != nil {
			t.Fatalf("AppendRequest(%+v): %v", want, err)
		}
		if !bytes.HasPrefix(enc, []byte("prefix")) {
			t.Fatalf("AppendRequest did not append to dst")
		}
		if n := len(enc) - len("prefix"); n != 6+len(want.Route)+len(want.Client)+len(want.Server)+extSize(want.Extensions) {
			t.Errorf("encoding of %+v is %d bytes", want, n)
		}
		r := bytes.NewReader(append(enc[len("prefix"):], "payload"...))
		got, err := ReadRequest(r)
		if err != nil {
			t.Fatalf("ReadRequest(%+v): %v", want, err)
		}
		if !sameRequest(got, want) {
			t.Errorf("round trip %+v -> %+v", want, got)
		}
		if rest, _ := io.ReadAll(r); string(rest) != "payload" {
			t.Errorf("ReadRequest read into the payload: rest %q", rest)
		}
	}
}

func extSize(xs []Extension) int {
	n := 0
	for _, x := range xs {
		n += 2 + len(x.Value)
	}
	return n
}

// sameRequest compares requests field by field; an empty extension value
// equals a nil one.
func sameRequest(a, b Request) bool {
	if a.Kind != b.Kind || a.Route != b.Route || a.Client != b.Client || a.Server != b.Server || len(a.Extensions) != len(b.Extensions) {
		return false
	}
	for i := range a.Extensions {
		if a.Extensions[i].Type != b.Extensions[i].Type || !bytes.Equal(a.Extensions[i].Value, b.Extensions[i].Value) {
			return false
		}
	}
	return true
}

// A receiver that knows none of the extension types still reads the
// request, and the payload after it, intact.
func TestReadRequestSkipsUnknownExtensions(t *testing.T) {
	enc, err := AppendRequest(nil, Request{Route: "r", Extensions: []Extension{{Type: 99, Value: []byte("future")}, {Type: 3, Value: []byte("x")}}})
	if err != nil {
		t.Fatal(err)
	}
	r := bytes.NewReader(append(enc, "payload"...))
	req, err := ReadRequest(r)
	if err != nil {
		t.Fatal(err)
	}
	if req.Route != "r" || req.Kind != KindTCP {
		t.Errorf("request = %+v", req)
	}
	if v, ok := req.Extension(3); !ok || string(v) != "x" {
		t.Errorf("Extension(3) = %q, %v", v, ok)
	}
	if _, ok := req.Extension(4); ok {
		t.Error("Extension(4) found in a request without it")
	}
	if rest, _ := io.ReadAll(r); string(rest) != "payload" {
		t.Errorf("rest after the request %q", rest)
	}
}

func TestExtensionBounds(t *testing.T) {
	many := make([]Extension, MaxExtensions+1)
	if _, err := AppendRequest(nil, Request{Extensions: many}); !errors.Is(err, ErrPreamble) {
		t.Errorf("AppendRequest(%d extensions) = %v, want ErrPreamble", len(many), err)
	}
	if _, err := AppendRequest(nil, Request{Extensions: []Extension{{Value: make([]byte, 256)}}}); !errors.Is(err, ErrPreamble) {
		t.Errorf("AppendRequest(256-byte extension) = %v, want ErrPreamble", err)
	}
	// A count past the bound is refused before anything is allocated.
	if _, err := ReadRequest(bytes.NewReader([]byte{Version, 0, 0, 0, 0, MaxExtensions + 1})); !errors.Is(err, ErrPreamble) {
		t.Errorf("ReadRequest(%d extensions) = %v, want ErrPreamble", MaxExtensions+1, err)
	}
}

func TestAppendRequestRejectsLongFields(t *testing.T) {
	long := strings.Repeat("x", 256)
	for _, r := range []Request{{Route: long}, {Client: long}, {Server: long}, {Route: long, Client: long}} {
		enc, err := AppendRequest([]byte("dst"), r)
		if !errors.Is(err, ErrPreamble) {
			t.Errorf("AppendRequest(route %d, client %d bytes) = %v, want ErrPreamble", len(r.Route), len(r.Client), err)
		}
		if enc != nil {
			t.Errorf("AppendRequest returned %q with its error", enc)
		}
	}
}

func TestResponseRoundTrip(t *testing.T) {
	for s := StatusOK; s < statusEnd; s++ {
		want := Response{Status: s, Message: "because " + s.String()}
		enc := AppendResponse(nil, want)
		r := bytes.NewReader(append(enc, "origin bytes"...))
		got, err := ReadResponse(r)
		if err != nil {
			t.Fatalf("ReadResponse(%v): %v", s, err)
		}
		if got != want {
			t.Errorf("round trip %+v -> %+v", want, got)
		}
		if rest, _ := io.ReadAll(r); string(rest) != "origin bytes" {
			t.Errorf("ReadResponse read past the response: rest %q", rest)
		}
		if strings.HasPrefix(s.String(), "status(") {
			t.Errorf("status %d has no name", s)
		}
	}
	if got := Status(200).String(); got != "status(200)" {
		t.Errorf("Status(200).String() = %q", got)
	}
}

func TestAppendResponseTruncatesMessage(t *testing.T) {
	msg := strings.Repeat("m", 300)
	enc := AppendResponse(nil, Response{Status: StatusOriginError, Message: msg})
	if len(enc) != 3+255 {
		t.Fatalf("encoded response is %d bytes, want %d", len(enc), 3+255)
	}
	got, err := ReadResponse(bytes.NewReader(enc))
	if err != nil {
		t.Fatal(err)
	}
	if got.Message != msg[:255] {
		t.Errorf("message is %d bytes, want the first 255", len(got.Message))
	}
}

func TestReadRequestErrors(t *testing.T) {
	valid, err := AppendRequest(nil, Request{Route: "route", Client: "1.2.3.4:5"})
	if err != nil {
		t.Fatal(err)
	}
	// Every strict prefix of a valid request is truncated.
	for n := range len(valid) {
		if _, err := ReadRequest(bytes.NewReader(valid[:n])); !errors.Is(err, ErrPreamble) {
			t.Errorf("ReadRequest(first %d of %d bytes) = %v, want ErrPreamble", n, len(valid), err)
		}
	}
	for _, v := range []byte{0, 1, 3, 255} {
		bad := append([]byte{v}, valid[1:]...)
		_, err := ReadRequest(bytes.NewReader(bad))
		if !errors.Is(err, ErrPreamble) || !strings.Contains(err.Error(), "version") {
			t.Errorf("ReadRequest(version %d) = %v, want a version error wrapping ErrPreamble", v, err)
		}
	}
	// A length that runs past the end.
	if _, err := ReadRequest(bytes.NewReader([]byte{Version, 0, 255, 'a'})); !errors.Is(err, ErrPreamble) {
		t.Errorf("ReadRequest(overlong route) = %v, want ErrPreamble", err)
	}
}

func TestReadResponseErrors(t *testing.T) {
	valid := AppendResponse(nil, Response{Status: StatusUnknownRoute, Message: "no such route"})
	for n := range len(valid) {
		if _, err := ReadResponse(bytes.NewReader(valid[:n])); !errors.Is(err, ErrPreamble) {
			t.Errorf("ReadResponse(first %d of %d bytes) = %v, want ErrPreamble", n, len(valid), err)
		}
	}
	for _, v := range []byte{0, 1, 3} {
		if _, err := ReadResponse(bytes.NewReader(append([]byte{v}, valid[1:]...))); !errors.Is(err, ErrPreamble) {
			t.Errorf("ReadResponse(version %d) = %v, want ErrPreamble", v, err)
		}
	}
	for _, s := range []byte{byte(statusEnd), byte(statusEnd) + 1, 255} {
		_, err := ReadResponse(bytes.NewReader([]byte{Version, s, 0}))
		if !errors.Is(err, ErrPreamble) || !strings.Contains(err.Error(), "unknown status") {
			t.Errorf("ReadResponse(status %d) = %v, want an unknown-status error wrapping ErrPreamble", s, err)
		}
	}
}

func FuzzReadRequest(f *testing.F) {
	for _, r := range []Request{{}, {Route: "redis", Client: "127.0.0.1:1234"}, {Route: strings.Repeat("r", 255), Client: "[::1]:1"}, {Route: "app", Client: AddrLocal, Server: AddrLocal},
		{Kind: 9, Route: "x", Extensions: []Extension{{Type: 1, Value: []byte("abc")}, {Type: 255}}}, {Kind: KindRouteQuery, Route: "pg"}} {
		enc, err := AppendRequest(nil, r)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(enc)
		f.Add(append(enc, "payload"...))
		f.Add(enc[:len(enc)-1])
	}
	f.Add([]byte{1, 0, 0})
	f.Add([]byte{Version, 0, 0, 0, 0, 255})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		req, err := ReadRequest(r)
		if err != nil {
			if !errors.Is(err, ErrPreamble) {
				t.Fatalf("ReadRequest error %v does not wrap ErrPreamble", err)
			}
			return
		}
		enc, err := AppendRequest(nil, req)
		if err != nil {
			t.Fatalf("AppendRequest of a parsed request: %v", err)
		}
		if !bytes.HasPrefix(data, enc) {
			t.Fatalf("re-encoding %x is not a prefix of the input %x", enc, data)
		}
		if consumed := len(data) - r.Len(); consumed != len(enc) {
			t.Fatalf("ReadRequest consumed %d bytes of a %d-byte request", consumed, len(enc))
		}
	})
}

func FuzzReadResponse(f *testing.F) {
	for s := StatusOK; s < statusEnd; s++ {
		enc := AppendResponse(nil, Response{Status: s, Message: s.String()})
		f.Add(enc)
		f.Add(append(enc, "origin"...))
	}
	f.Add(AppendResponse(nil, Response{Status: StatusOriginError, Message: strings.Repeat("m", 300)}))
	f.Add([]byte{Version, byte(statusEnd), 0})
	f.Fuzz(func(t *testing.T, data []byte) {
		r := bytes.NewReader(data)
		resp, err := ReadResponse(r)
		if err != nil {
			if !errors.Is(err, ErrPreamble) {
				t.Fatalf("ReadResponse error %v does not wrap ErrPreamble", err)
			}
			return
		}
		if resp.Status >= statusEnd {
			t.Fatalf("ReadResponse accepted status %d", resp.Status)
		}
		enc := AppendResponse(nil, resp)
		if !bytes.HasPrefix(data, enc) {
			t.Fatalf("re-encoding %x is not a prefix of the input %x", enc, data)
		}
		if consumed := len(data) - r.Len(); consumed != len(enc) {
			t.Fatalf("ReadResponse consumed %d bytes of a %d-byte response", consumed, len(enc))
		}
	})
}
