package proxy

import (
	"fmt"

	"github.com/pqtunnel/pqtunnel/route"
	"github.com/pqtunnel/pqtunnel/route/tcproute"
	"github.com/pqtunnel/pqtunnel/wire"
)

// builtinKinds are the route kinds every engine delivers, one line each;
// Config.Kinds adds more.
var builtinKinds = []route.Kind{
	tcproute.Kind{},
}

// initKinds indexes the route kinds by their wire value and checks that
// every route's kind is one of them.
func (e *Engine) initKinds() error {
	e.kinds = map[wire.Kind]route.Kind{}
	for _, k := range append(builtinKinds[:len(builtinKinds):len(builtinKinds)], e.cfg.Kinds...) {
		w := k.Wire()
		if _, dup := e.kinds[w]; dup || w == wire.KindRouteQuery {
			return &ConfigError{Field: "Kinds", Err: fmt.Errorf("stream kind %s is taken", w)}
		}
		e.kinds[w] = k
	}
	for _, side := range []struct {
		field  string
		routes []Route
	}{{"Forward", e.cfg.Forward}, {"Target", e.cfg.Target}} {
		for _, r := range side.routes {
			if _, ok := e.kinds[r.Kind]; !ok {
				return &ConfigError{Field: side.field, Err: fmt.Errorf("route %s: no route kind delivers stream kind %s", routeName(r.Name), r.Kind)}
			}
		}
	}
	return nil
}
