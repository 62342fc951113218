package k8swatch

import (
	"context"
	"fmt"
	"slices"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// Is the API server still there: informers whose watch failed are
// suspect until they hear from it again or a probe of the API server
// succeeds; the source is not ready meanwhile.

// ReadyzProbe returns an [APIConfig.Probe] that asks the API server's
// /readyz endpoint through c, for example a clientset's
// Discovery().RESTClient(). Probes share the clientset's connections, so a
// dead connection fails the probe as it stalls the watches.
func ReadyzProbe(c rest.Interface) func(context.Context) error {
	return func(ctx context.Context) error {
		if err := c.Get().AbsPath("/readyz").Do(ctx).Error(); err != nil {
			return fmt.Errorf("probe API server readiness: %w", err)
		}
		return nil
	}
}

// watchErrorHandler is called by w's reflector when a list or watch fails
// with an error it does not retry by itself (a refused connection it does
// retry, silently). It marks w suspect.
func (s *APISource) watchErrorHandler(w *watched) cache.WatchErrorHandlerWithContext {
	return func(ctx context.Context, _ *cache.Reflector, err error) {
		if ctx.Err() != nil {
			return // stopping
		}
		s.log.Debug("list or watch failed", "informer", w.name, "error", err)
		s.suspect([]*watched{w}, fmt.Sprintf("list and watch %s: %v", w.name, err))
	}
}

// suspect marks ws as possibly behind the API server.
func (s *APISource) suspect(ws []*watched, reason string) {
	s.healthMu.Lock()
	defer s.healthMu.Unlock()
	for _, w := range ws {
		if !w.suspect {
			w.suspect, w.suspectRV = true, w.lastRV()
		}
	}
	s.pub.setStale(reason)
}

// suspectAll marks every informer as possibly behind the API server.
func (s *APISource) suspectAll(reason string) {
	s.healthMu.Lock()
	ws := slices.Clone(s.watched)
	s.healthMu.Unlock()
	s.suspect(ws, reason)
}

// probed records a successful probe: informers that received data since
// they became suspect are current again, and when all are, so is the view.
func (s *APISource) probed() {
	s.healthMu.Lock()
	defer s.healthMu.Unlock()
	for _, w := range s.watched {
		if w.suspect && w.lastRV() != w.suspectRV {
			w.suspect = false
		}
		if w.suspect {
			return
		}
	}
	s.pub.setCurrent()
}

// probeLoop probes the API server every ProbeInterval until ctx is done.
// Without a Probe it only checks whether suspect informers heard from the
// server again.
func (s *APISource) probeLoop(ctx context.Context) {
	for {
		var err error
		if s.cfg.Probe != nil {
			pctx, cancel := context.WithTimeout(ctx, s.cfg.ProbeTimeout)
			err = s.cfg.Probe(pctx)
			cancel()
		}
		if ctx.Err() != nil {
			return
		}
		if err != nil {
			s.suspectAll(err.Error())
		} else {
			s.probed()
		}
		t := s.clock.NewTimer(s.cfg.ProbeInterval)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C():
		}
	}
}
