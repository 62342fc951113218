package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"golang.org/x/net/netutil"
	"golang.org/x/sync/errgroup"

	"github.com/podgate/podgate/fastpath"
	"github.com/podgate/podgate/k8swatch"
	"github.com/podgate/podgate/node"
	"github.com/podgate/podgate/policy/table"
)

// Limits of the agent's HTTP servers. The metrics server (--metrics-addr:
// /metrics, /flows, and /healthz and /readyz for tools) is reachable by
// whoever reaches its address; the health server (--health-addr: /healthz
// and /readyz, for the kubelet's probes) listens on loopback by default,
// so that no client of the metrics server can hold or starve it.
const (
	// metricsReadHeaderTimeout bounds how long a client may take to send
	// its request headers.
	metricsReadHeaderTimeout = 10 * time.Second
	// metricsWriteTimeout bounds writing a response (a /metrics scrape),
	// and, for a /flows stream, each write: a client that stops reading
	// is dropped after it.
	metricsWriteTimeout = 15 * time.Second
	// metricsIdleTimeout closes idle keep-alive connections.
	metricsIdleTimeout = 30 * time.Second
	// maxHeaderBytes bounds a request's headers (net/http's default is 1
	// MiB; it reads 4 KiB more before it refuses them), so a connection's
	// buffers stay small: a JSON Web Token in an Authorization header fits.
	maxHeaderBytes = 8 << 10
	// metricsInFlight is how many /metrics responses are rendered at once;
	// more get 503 at once, and their connection is closed. A response
	// being written holds the gathered metrics until it is written.
	metricsInFlight = 4

	// healthTimeout bounds every step of a health connection: headers,
	// response, idle time.
	healthTimeout = 2 * time.Second
	// healthMaxConns bounds the health server's connections.
	healthMaxConns = 64
)

// pprofWriteTimeout bounds writing a profile: a CPU profile or trace
// takes the seconds asked for (30 by default, net/http/pprof refuses
// longer than the server's WriteTimeout) before it is written.
const pprofWriteTimeout = 65 * time.Second

// servers are the agent's HTTP servers and their listeners; pprof is nil
// unless --pprof-addr is set.
type servers struct {
	metrics, health     *http.Server
	metricsLn, healthLn net.Listener
	pprof               *http.Server
	pprofLn             net.Listener
}

// serveConfig is what newServers needs.
type serveConfig struct {
	MetricsAddr, HealthAddr string
	// PprofAddr, when set, serves Go's runtime profiles
	// (net/http/pprof) on a listener of their own.
	PprofAddr string
	// MaxConns bounds the metrics server's connections, MaxConnsPerClient
	// those from one source address.
	MaxConns, MaxConnsPerClient int
	Registry                    *prometheus.Registry
	Source                      k8swatch.Source
	Node                        *node.Node
	Store                       *table.Store
	Flows                       *fastpath.FlowLog
}

// newServers listens on both addresses and builds the servers; Serve runs
// them.
func newServers(cfg serveConfig) (*servers, error) {
	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "podgate_http_connections_rejected_total",
		Help: "Connections to the metrics server closed at once because their client address had --metrics-max-conns-per-client open.",
	}, []string{"listener"})
	if err := cfg.Registry.Register(rejected); err != nil {
		return nil, fmt.Errorf("register metrics: %w", err)
	}
	healthz, readyz := healthHandlers(cfg.Node, cfg.Store, cfg.Source)

	mux := http.NewServeMux()
	mux.Handle("/flows", streamWriteDeadline(cfg.Flows, metricsWriteTimeout))
	mux.Handle("/metrics", limitInFlight(promhttp.HandlerFor(cfg.Registry, promhttp.HandlerOpts{Registry: cfg.Registry}), metricsInFlight))
	mux.HandleFunc("/healthz", healthz)
	mux.HandleFunc("/readyz", readyz)
	hmux := http.NewServeMux()
	hmux.HandleFunc("/healthz", healthz)
	hmux.HandleFunc("/readyz", readyz)

	s := &servers{
		metrics: &http.Server{
			Handler:           mux,
			ReadHeaderTimeout: metricsReadHeaderTimeout,
			WriteTimeout:      metricsWriteTimeout,
			IdleTimeout:       metricsIdleTimeout,
			MaxHeaderBytes:    maxHeaderBytes,
		},
		health: &http.Server{
			Handler:           hmux,
			ReadHeaderTimeout: healthTimeout,
			ReadTimeout:       healthTimeout,
			WriteTimeout:      healthTimeout,
			IdleTimeout:       healthTimeout,
			MaxHeaderBytes:    maxHeaderBytes,
		},
	}
	ln, err := net.Listen("tcp", cfg.MetricsAddr)
	if err != nil {
		return nil, fmt.Errorf("listen on --metrics-addr: %w", err)
	}
	s.metricsLn = &clientLimitListener{
		Listener:  netutil.LimitListener(ln, cfg.MaxConns),
		perClient: cfg.MaxConnsPerClient,
		rejected:  rejected.WithLabelValues("metrics"),
		open:      make(map[netip.Addr]int),
	}
	hln, err := net.Listen("tcp", cfg.HealthAddr)
	if err != nil {
		_ = ln.Close()
		return nil, fmt.Errorf("listen on --health-addr: %w", err)
	}
	s.healthLn = netutil.LimitListener(hln, healthMaxConns)
	if cfg.PprofAddr != "" {
		pln, err := net.Listen("tcp", cfg.PprofAddr)
		if err != nil {
			_, _ = ln.Close(), hln.Close()
			return nil, fmt.Errorf("listen on --pprof-addr: %w", err)
		}
		s.pprofLn = netutil.LimitListener(pln, healthMaxConns)
		s.pprof = &http.Server{
			Handler:           pprofMux(),
			ReadHeaderTimeout: metricsReadHeaderTimeout,
			WriteTimeout:      pprofWriteTimeout,
			IdleTimeout:       metricsIdleTimeout,
			MaxHeaderBytes:    maxHeaderBytes,
		}
	}
	return s, nil
}

// pprofMux serves net/http/pprof's handlers on a mux of their own (the
// package registers them on http.DefaultServeMux too, which no server of
// the agent uses).
func pprofMux() *http.ServeMux {
	mux := http.NewServeMux()
	mux.HandleFunc("/debug/pprof/", pprof.Index)
	mux.HandleFunc("/debug/pprof/cmdline", pprof.Cmdline)
	mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
	mux.HandleFunc("/debug/pprof/symbol", pprof.Symbol)
	mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	return mux
}

// Serve serves both servers until ctx is done, then shuts them down
// (giving open requests 5 seconds).
func (s *servers) Serve(ctx context.Context) error {
	g, gctx := errgroup.WithContext(ctx)
	type server struct {
		name string
		srv  *http.Server
		ln   net.Listener
	}
	all := []server{{"--metrics-addr", s.metrics, s.metricsLn}, {"--health-addr", s.health, s.healthLn}}
	if s.pprof != nil {
		all = append(all, server{"--pprof-addr", s.pprof, s.pprofLn})
	}
	for _, x := range all {
		g.Go(func() error {
			if err := x.srv.Serve(x.ln); !errors.Is(err, http.ErrServerClosed) {
				return fmt.Errorf("serve %s %s: %w", x.name, x.ln.Addr(), err)
			}
			return nil
		})
		g.Go(func() error {
			<-gctx.Done()
			c, cancel := context.WithTimeout(context.WithoutCancel(gctx), 5*time.Second)
			defer cancel()
			return x.srv.Shutdown(c)
		})
	}
	return g.Wait()
}

// healthHandlers returns the /healthz and /readyz handlers.
func healthHandlers(nd *node.Node, store *table.Store, src k8swatch.Source) (healthz, readyz http.HandlerFunc) {
	healthz = func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	}
	readyz = func(w http.ResponseWriter, _ *http.Request) {
		var problems []string
		if !nd.Ready() {
			problems = append(problems, "node plumbing not ready")
		}
		if store.Load() == nil {
			problems = append(problems, "no policy table yet")
		}
		if err := src.Status().Err(); err != nil {
			problems = append(problems, err.Error())
		}
		if len(problems) > 0 {
			http.Error(w, strings.Join(problems, "; "), http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	}
	return healthz, readyz
}

// limitInFlight serves at most n requests with h at once; others get 503
// and their connection closed, so that they hold no slot of the server's
// connection budget either.
func limitInFlight(h http.Handler, n int) http.Handler {
	sem := make(chan struct{}, n)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case sem <- struct{}{}:
			defer func() { <-sem }()
			h.ServeHTTP(w, r)
		default:
			w.Header().Set("Connection", "close")
			http.Error(w, fmt.Sprintf("%d /metrics responses are being written; try again later", n), http.StatusServiceUnavailable)
		}
	})
}

// clientLimitListener closes a new connection at once when its source
// address has perClient connections open already, so that one client
// cannot take the whole connection budget of the listener it wraps (a
// netutil.LimitListener). Safe for concurrent use.
type clientLimitListener struct {
	net.Listener
	perClient int
	rejected  prometheus.Counter

	mu   sync.Mutex
	open map[netip.Addr]int
}

// Accept implements net.Listener.
func (l *clientLimitListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		ip := netip.Addr{}
		if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
			ip = ap.Addr().Unmap()
		}
		l.mu.Lock()
		if l.open[ip] >= l.perClient {
			l.mu.Unlock()
			l.rejected.Inc()
			_ = c.Close()
			continue
		}
		l.open[ip]++
		l.mu.Unlock()
		return &clientConn{Conn: c, l: l, ip: ip}, nil
	}
}

// clientConn gives its client's slot back when closed.
type clientConn struct {
	net.Conn
	l    *clientLimitListener
	ip   netip.Addr
	once sync.Once
}

// Close implements net.Conn.
func (c *clientConn) Close() error {
	err := c.Conn.Close()
	c.once.Do(func() {
		c.l.mu.Lock()
		if c.l.open[c.ip]--; c.l.open[c.ip] <= 0 {
			delete(c.l.open, c.ip)
		}
		c.l.mu.Unlock()
	})
	return err
}

// streamWriteDeadline serves h with the connection's write deadline moved
// d ahead before every write and flush: a streaming response (a /flows
// follower) may last as long as it likes, but a client that stops reading
// is dropped after d, as the server's WriteTimeout does for other
// responses.
func streamWriteDeadline(h http.Handler, d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.ServeHTTP(&deadlineWriter{ResponseWriter: w, rc: http.NewResponseController(w), d: d}, r)
	})
}

type deadlineWriter struct {
	http.ResponseWriter
	rc *http.ResponseController
	d  time.Duration
}

func (w *deadlineWriter) Write(b []byte) (int, error) {
	_ = w.rc.SetWriteDeadline(time.Now().Add(w.d))
	return w.ResponseWriter.Write(b)
}

// Flush implements http.Flusher.
func (w *deadlineWriter) Flush() {
	_ = w.rc.SetWriteDeadline(time.Now().Add(w.d))
	_ = w.rc.Flush()
}

// Unwrap lets http.ResponseController reach the server's writer.
func (w *deadlineWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }
