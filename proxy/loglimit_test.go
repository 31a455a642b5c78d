package proxy

import (
	"testing"
	"time"
)

func TestLogLimiterKeepsOneLinePerReasonAndCountsTheRest(t *testing.T) {
	l := newLogLimiter(time.Hour)
	if ok, n := l.allow("no tunnel"); !ok || n != 0 {
		t.Fatalf("first line: allow = %v, %d; want true, 0", ok, n)
	}
	for range 3 {
		if ok, _ := l.allow("no tunnel"); ok {
			t.Fatal("a repeat within the interval was allowed")
		}
	}
	if ok, _ := l.allow("busy"); !ok {
		t.Fatal("another reason was held back by the first")
	}
	// Pretend the interval has passed.
	l.last["no tunnel"] = time.Now().Add(-2 * time.Hour)
	if ok, n := l.allow("no tunnel"); !ok || n != 3 {
		t.Fatalf("after the interval: allow = %v, %d; want true, 3 suppressed", ok, n)
	}
}
