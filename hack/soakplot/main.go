// Command soakplot draws the CSV that `make soak` writes (TestSoak in
// internal/test/hostile) as a PNG: the agent's resident memory and Go heap in
// use over the soak, and below them its goroutines, open files and flow
// table entries.
//
//	go run ./hack/soakplot -in bin/soak.csv -out docs/soak/soak.png
package main

import (
	"encoding/csv"
	"errors"
	"flag"
	"fmt"
	"image/color"
	"os"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

func main() {
	in := flag.String("in", "bin/soak.csv", "the soak's CSV file")
	out := flag.String("out", "soak.png", "the PNG file to write")
	title := flag.String("title", "podgate agent soak", "the plot's title")
	flag.Parse()
	if err := run(*in, *out, *title); err != nil {
		fmt.Fprintln(os.Stderr, "soakplot:", err)
		os.Exit(1)
	}
}

// columns reads the CSV into columns by header name.
func columns(path string) (map[string][]float64, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read soak CSV: %w", err)
	}
	defer f.Close()
	rows, err := csv.NewReader(f).ReadAll()
	if err != nil {
		return nil, fmt.Errorf("read soak CSV %s: %w", path, err)
	}
	if len(rows) < 2 {
		return nil, fmt.Errorf("read soak CSV %s: no samples", path)
	}
	cols := make(map[string][]float64)
	for i, row := range rows[1:] {
		if len(row) != len(rows[0]) {
			return nil, fmt.Errorf("read soak CSV %s: line %d has %d fields, the header %d", path, i+2, len(row), len(rows[0]))
		}
		for j, name := range rows[0] {
			v, err := strconv.ParseFloat(row[j], 64)
			if err != nil {
				v = 0 // the time column
			}
			cols[name] = append(cols[name], v)
		}
	}
	return cols, nil
}

func run(in, out, title string) error {
	cols, err := columns(in)
	if err != nil {
		return err
	}
	minutes := cols["elapsed_s"]
	if minutes == nil {
		return errors.New("read soak CSV: no elapsed_s column")
	}
	for i := range minutes {
		minutes[i] /= 60
	}
	series := func(name string, scale float64) plotter.XYs {
		xy := make(plotter.XYs, len(minutes))
		for i := range minutes {
			xy[i].X, xy[i].Y = minutes[i], cols[name][i]*scale
		}
		return xy
	}
	line := func(p *plot.Plot, label string, xy plotter.XYs, c color.Color) error {
		l, err := plotter.NewLine(xy)
		if err != nil {
			return fmt.Errorf("plot %s: %w", label, err)
		}
		// Room above the lines for the legend.
		for _, v := range xy {
			p.Y.Max = max(p.Y.Max, 1.35*v.Y)
		}
		l.Color = c
		l.Width = vg.Points(1.5)
		p.Add(l)
		p.Legend.Add(label, l)
		return nil
	}
	blue, red, green, grey := color.RGBA{0x1f, 0x77, 0xb4, 0xff}, color.RGBA{0xd6, 0x27, 0x28, 0xff},
		color.RGBA{0x2c, 0xa0, 0x2c, 0xff}, color.RGBA{0x7f, 0x7f, 0x7f, 0xff}

	mem := plot.New()
	mem.Title.Text = title + ": memory"
	mem.X.Label.Text = "minutes"
	mem.Y.Label.Text = "MiB"
	mem.Y.Min = 0
	mem.Legend.Top = true
	mem.Legend.Left = true
	mem.Add(plotter.NewGrid())
	const mib = 1.0 / (1 << 20)
	if err := line(mem, "resident (RSS)", series("rss_bytes", mib), blue); err != nil {
		return err
	}
	if err := line(mem, "Go heap in use", series("heap_inuse_bytes", mib), red); err != nil {
		return err
	}

	res := plot.New()
	res.Title.Text = "goroutines, open files, flow table entries / 100"
	res.X.Label.Text = "minutes"
	res.Y.Min = 0
	res.Legend.Top = true
	res.Legend.Left = true
	res.Add(plotter.NewGrid())
	if err := line(res, "goroutines", series("goroutines", 1), green); err != nil {
		return err
	}
	if err := line(res, "open files", series("open_fds", 1), grey); err != nil {
		return err
	}
	if err := line(res, "flow table entries / 100", series("conntrack_entries", 0.01), blue); err != nil {
		return err
	}

	const w, h = 18 * vg.Centimeter, 18 * vg.Centimeter
	img := vgimg.New(w, h)
	dc := draw.New(img)
	tiles := draw.Tiles{Rows: 2, Cols: 1, PadX: vg.Millimeter, PadY: 4 * vg.Millimeter,
		PadTop: 2 * vg.Millimeter, PadBottom: 2 * vg.Millimeter, PadLeft: 2 * vg.Millimeter, PadRight: 2 * vg.Millimeter}
	canvases := plot.Align([][]*plot.Plot{{mem}, {res}}, tiles, dc)
	mem.Draw(canvases[0][0])
	res.Draw(canvases[1][0])
	f, err := os.Create(out)
	if err != nil {
		return fmt.Errorf("write plot: %w", err)
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		_ = f.Close()
		return fmt.Errorf("write plot %s: %w", out, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write plot %s: %w", out, err)
	}
	return nil
}
