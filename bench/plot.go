package bench

import (
	"fmt"
	"path/filepath"
	"slices"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// enforcers in plot and table order.
func enforcers() []string { return []string{EnforcerNone, EnforcerIPTables, EnforcerPodgate} }

// series is one line of a plot: an enforcer (or variant) of the quiet or
// the busy pass.
type series struct {
	label, enforcer string
	busy            bool
}

// series returns the lines of the plots: the enforcers and variants of
// the quiet pass, then, if there was one, of the busy pass.
func (r *Report) series() []series {
	var out []series
	names := append(enforcers(), r.podgates()[1:]...)
	for _, e := range names {
		out = append(out, series{label: e, enforcer: e})
	}
	if r.BusyNode != nil {
		for _, e := range names {
			out = append(out, series{label: e + " (busy)", enforcer: e, busy: true})
		}
	}
	return out
}

// WritePlots writes forwarding.png (forwarding rate against the policy
// count, per enforcer), connections.png (the same for the connection
// rate), loss.png (loss against offered rate of every search step) and
// latency.png (round-trip CDF per enforcer at the largest policy
// count) into dir.
func (r *Report) WritePlots(dir string) ([]string, error) {
	var paths []string
	for _, pl := range []struct {
		file, title, y string
		get            func(x *Result) (float64, bool)
	}{
		{"forwarding.png", "Forwarding rate, 64-byte UDP, <0.1% loss", "packets/s", fwdRate},
		{"connections.png", "New TCP connections per second", "connections/s", func(x *Result) (float64, bool) {
			if x == nil || x.Conn == nil {
				return 0, false
			}
			return x.Conn.PerSecond, true
		}},
	} {
		p, err := r.perPolicyPlot(pl.title, pl.y, pl.get)
		if err != nil {
			return paths, err
		}
		path := filepath.Join(dir, pl.file)
		if err := p.Save(16*vg.Centimeter, 11*vg.Centimeter, path); err != nil {
			return paths, fmt.Errorf("save %s: %w", pl.file, err)
		}
		paths = append(paths, path)
	}
	lp, err := r.lossPlot()
	if err != nil {
		return paths, err
	}
	lpath := filepath.Join(dir, "loss.png")
	if err := lp.Save(16*vg.Centimeter, 11*vg.Centimeter, lpath); err != nil {
		return paths, fmt.Errorf("save loss.png: %w", err)
	}
	paths = append(paths, lpath)
	p, err := r.latencyPlot()
	if err != nil {
		return paths, err
	}
	path := filepath.Join(dir, "latency.png")
	if err := p.Save(16*vg.Centimeter, 11*vg.Centimeter, path); err != nil {
		return paths, fmt.Errorf("save latency.png: %w", err)
	}
	return append(paths, path), nil
}

// perPolicyPlot draws one line per enforcer over the policy counts (a
// nominal axis: 0, 100 and 2,000 are categories, not a scale).
func (r *Report) perPolicyPlot(title, y string, get func(x *Result) (float64, bool)) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = title
	p.X.Label.Text = "synthetic NetworkPolicies (10,000 pods in the table)"
	p.Y.Label.Text = y
	p.Y.Min = 0
	names := make([]string, len(r.Settings.Policies))
	for i, n := range r.Settings.Policies {
		names[i] = strconv.Itoa(n)
	}
	p.NominalX(names...)
	var args []any
	top := 0.0
	for _, sr := range r.series() {
		var xys plotter.XYs
		for i, n := range r.Settings.Policies {
			if v, ok := get(r.lookup(sr.busy, sr.enforcer, n, 0)); ok {
				xys = append(xys, plotter.XY{X: float64(i), Y: v})
				top = max(top, v)
			}
		}
		if len(xys) > 0 {
			args = append(args, sr.label, xys)
		}
	}
	if err := plotutil.AddLinePoints(p, args...); err != nil {
		return nil, fmt.Errorf("plot %s: %w", title, err)
	}
	// Room for the legend above the lines: about 4.5% of the height per
	// entry.
	p.Y.Max = top * max(1.35, 1/(1-0.045*float64(len(args)/2)))
	p.Legend.Top = true
	p.Legend.Left = true
	return p, nil
}

// lossPlot draws the loss of every rate-search trial against the rate the
// generator offered, per enforcer and variant of the quiet pass, policy
// counts pooled (the flow-table searches left out).
func (r *Report) lossPlot() (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Loss per rate-search step (all policy counts)"
	p.X.Label.Text = "offered packets/s"
	p.Y.Label.Text = "loss (%)"
	p.Y.Min = 0
	var args []any
	for _, sr := range r.series() {
		if sr.busy {
			continue
		}
		var xys plotter.XYs
		for _, x := range append(slices.Clone(r.Results), r.VariantResults...) {
			if x.Enforcer != sr.enforcer || x.Flows != 0 || x.Forwarding == nil {
				continue
			}
			for _, t := range x.Forwarding.Trials {
				xys = append(xys, plotter.XY{X: t.Offered, Y: 100 * max(0, t.Loss)})
			}
		}
		if len(xys) > 0 {
			args = append(args, sr.label, xys)
		}
	}
	if err := plotutil.AddScatters(p, args...); err != nil {
		return nil, fmt.Errorf("plot loss: %w", err)
	}
	p.Add(plotter.NewGrid())
	p.Legend.Top = true
	p.Legend.Left = true
	return p, nil
}

// latencyPlot draws the empirical CDF of the round trips per enforcer at
// the largest policy count, up to the 99.9th percentile.
func (r *Report) latencyPlot() (*plot.Plot, error) {
	p := plot.New()
	last := r.Settings.Policies[len(r.Settings.Policies)-1]
	p.Title.Text = fmt.Sprintf("UDP round trip at ~%.0f/s, %d policies", r.Settings.LatencyRate, last)
	p.X.Label.Text = "round trip (µs, log scale)"
	p.Y.Label.Text = "fraction of round trips ≤ x"
	p.Y.Min, p.Y.Max = 0, 1
	p.X.Scale = plot.LogScale{}
	p.X.Tick.Marker = plot.LogTicks{Prec: -1}
	var args []any
	for _, sr := range r.series() {
		x := r.lookup(sr.busy, sr.enforcer, last, 0)
		if x == nil || x.Latency == nil || len(x.Latency.Samples) == 0 {
			continue
		}
		s := slices.Clone(x.Latency.Samples)
		slices.Sort(s)
		cut := max(1, int(float64(len(s))*0.999))
		s = s[:cut]
		xys := make(plotter.XYs, 0, len(s))
		step := max(1, len(s)/500)
		for i := 0; i < len(s); i += step {
			xys = append(xys, plotter.XY{X: s[i], Y: float64(i+1) / float64(len(x.Latency.Samples))})
		}
		args = append(args, fmt.Sprintf("%s (p99 %.0f µs)", sr.label, x.Latency.P99), xys)
	}
	if err := plotutil.AddLines(p, args...); err != nil {
		return nil, fmt.Errorf("plot latency: %w", err)
	}
	p.Legend.Top = false
	p.Legend.Left = false
	p.Legend.XOffs = -vg.Millimeter
	p.Legend.YOffs = 2 * vg.Centimeter
	return p, nil
}
