package dashtest

import (
	"errors"
	"fmt"
	"image/color"
	"math"
	"os"
	"slices"
	"time"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// plotPanel is a panel of the drops dashboard drawn into the PNG: its
// query (by title and ref), how to label the y axis and scale the values,
// and how to name a series.
type plotPanel struct {
	Title, Ref string
	YLabel     string
	Scale      float64
	Legend     func(map[string]string) string
}

// keyPanels are the panels of docs/dashboard-drops.png.
func keyPanels() []plotPanel {
	return []plotPanel{
		{"Drops by reason", "A", "packets/s", 1, func(m map[string]string) string { return m["reason"] }},
		{"Denied packets by pod (top 10)", "A", "packets/s", 1, func(m map[string]string) string {
			return m["namespace"] + "/" + m["pod"] + " " + m["direction"]
		}},
		{"Forwarded throughput by path", "A", "kbit/s", 1e-3, func(m map[string]string) string { return m["path"] }},
		{"Conntrack usage", "A", "% of capacity", 100, func(m map[string]string) string { return "node " + m["node"] }},
	}
}

// writePNG draws the key panels of the drops dashboard, from Prometheus'
// data between start and end, into a PNG file at path.
func (l *lab) writePNG(path string, defs queryDefs, vars map[string]string, start, end time.Time) error {
	const cols = 2
	specs := keyPanels()
	rows := (len(specs) + cols - 1) / cols
	grid := make([][]*plot.Plot, rows)
	for i, s := range specs {
		expr, ok := defs.panel(s.Title, s.Ref)
		if !ok {
			return fmt.Errorf("no panel %q", s.Title)
		}
		expr, err := substitute(expr, vars)
		if err != nil {
			return err
		}
		rs, err := l.queryRange(expr, start, end, time.Second)
		if err != nil {
			return fmt.Errorf("%q: %w", s.Title, err)
		}
		p, err := drawPanel(s, rs, start, end)
		if err != nil {
			return fmt.Errorf("%q: %w", s.Title, err)
		}
		grid[i/cols] = append(grid[i/cols], p)
	}
	img := vgimg.NewWith(vgimg.UseWH(12*vg.Inch, 7*vg.Inch), vgimg.UseDPI(96), vgimg.UseBackgroundColor(color.White))
	dc := draw.New(img)
	tiles := draw.Tiles{
		Rows: rows, Cols: cols,
		PadTop: vg.Millimeter * 3, PadBottom: vg.Millimeter * 3,
		PadLeft: vg.Millimeter * 3, PadRight: vg.Millimeter * 3,
		PadX: vg.Millimeter * 8, PadY: vg.Millimeter * 8,
	}
	canvases := plot.Align(grid, tiles, dc)
	for r := range grid {
		for c := range grid[r] {
			grid[r][c].Draw(canvases[r][c])
		}
	}
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write png: %w", err)
	}
	_, werr := vgimg.PngCanvas{Canvas: img}.WriteTo(f)
	return errors.Join(werr, f.Close())
}

// drawPanel plots the series of a range query, seconds since start on the
// x axis. Steps a series has no value for (the panels hide zero rates with
// "> 0") are drawn as zero.
func drawPanel(s plotPanel, rs []promResult, start, end time.Time) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = s.Title
	p.Title.TextStyle.Font.Size = vg.Points(13)
	p.X.Label.Text = "seconds since the traffic started"
	p.Y.Label.Text = s.YLabel
	p.Y.Min = 0
	p.Legend.Top = true
	p.Legend.Left = true
	p.Legend.TextStyle.Font.Size = vg.Points(9)
	p.Add(plotter.NewGrid())

	steps := int(end.Sub(start).Seconds())
	slices.SortFunc(rs, func(a, b promResult) int {
		la, lb := s.Legend(a.Metric), s.Legend(b.Metric)
		switch {
		case la < lb:
			return -1
		case la > lb:
			return 1
		}
		return 0
	})
	maxY := 0.0
	for i, r := range rs {
		vals := make([]float64, steps+1)
		for _, v := range r.Values {
			ts, _ := v[0].(float64)
			at := int(math.Round(ts - float64(start.UnixMilli())/1000))
			if at >= 0 && at <= steps {
				vals[at] = sampleValue(v) * s.Scale
			}
		}
		xys := make(plotter.XYs, len(vals))
		for x, y := range vals {
			xys[x] = plotter.XY{X: float64(x), Y: y}
			maxY = max(maxY, y)
		}
		line, err := plotter.NewLine(xys)
		if err != nil {
			return nil, fmt.Errorf("plot: %w", err)
		}
		line.Color = plotutil.Color(i)
		line.Width = vg.Points(1.5)
		p.Add(line)
		p.Legend.Add(s.Legend(r.Metric), line)
	}
	// Room above the highest line for the legend.
	p.Y.Max = max(maxY*1.35, 1e-9)
	p.X.Min, p.X.Max = 0, float64(steps)
	return p, nil
}
