package main

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

func TestFlowsCommand(t *testing.T) {
	var query string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		query = r.URL.RawQuery
		w.Write([]byte(`{"time":"2026-11-25T10:00:00.5Z","verdict":"deny","protocol":"TCP","src":{"ip":"10.0.0.4","port":5555},"dst":{"ip":"10.0.1.10","port":80,"namespace":"backend","pod":"dbpod"},"direction":"ingress","reason":"denied_ingress","policies":["backend/dbpod-policy"]}` + "\n"))
	}))
	defer srv.Close()
	addr := strings.TrimPrefix(srv.URL, "http://")
	out, _, err := podgate(t, "flows", "--addr", addr, "--namespace", "backend", "--verdict", "deny")
	if err != nil {
		t.Fatal(err)
	}
	if query != "namespace=backend&verdict=deny" {
		t.Errorf("query %q", query)
	}
	for _, w := range []string{"DENY (ingress)", "10.0.0.4:5555", "backend/dbpod 10.0.1.10:80", "backend/dbpod-policy"} {
		if !strings.Contains(out, w) {
			t.Errorf("output does not show %q:\n%s", w, out)
		}
	}
	if _, _, err := podgate(t, "flows", "--addr", addr, "--verdict", "maybe"); err == nil {
		t.Error("--verdict maybe accepted")
	}
	if _, _, err := podgate(t, "flows", "--addr", "127.0.0.1:1"); err == nil || !strings.Contains(err.Error(), "reach the agent") {
		t.Errorf("unreachable agent: %v", err)
	}
}
