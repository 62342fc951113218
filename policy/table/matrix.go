package table

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"strconv"
	"strings"
	"text/tabwriter"
)

// PortSpec is a protocol and, for TCP, UDP and SCTP, a port.
type PortSpec struct {
	Port     uint16
	Protocol Protocol
}

// String returns "80/TCP", or "ICMP" for protocols without ports.
func (p PortSpec) String() string {
	if !p.Protocol.HasPorts() {
		return p.Protocol.String()
	}
	return fmt.Sprintf("%d/%s", p.Port, p.Protocol)
}

// ParsePortSpecs parses a comma-separated list such as
// "80/TCP,81/UDP,80/SCTP,ICMP". A port without a protocol is TCP.
func ParsePortSpecs(s string) ([]PortSpec, error) {
	var out []PortSpec
	for _, f := range strings.Split(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		num, proto, hasProto := strings.Cut(f, "/")
		if !hasProto {
			if p, err := ParseProtocol(f); err == nil && !p.HasPorts() {
				out = append(out, PortSpec{Protocol: p})
				continue
			}
			proto = "TCP"
		}
		p, err := ParseProtocol(proto)
		if err != nil {
			return nil, fmt.Errorf("port %q: %w", f, err)
		}
		if !p.HasPorts() {
			return nil, fmt.Errorf("port %q: %s has no ports; write %s alone", f, p, p)
		}
		n, err := strconv.ParseUint(num, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("port %q: port must be a number from 1 to 65535", f)
		}
		out = append(out, PortSpec{Port: uint16(n), Protocol: p})
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("no ports in %q", s)
	}
	return out, nil
}

// MatrixEntry is one cell of a reachability matrix. Its JSON form is the
// one `podgate policy matrix -o json` prints.
type MatrixEntry struct {
	From     string `json:"from"`
	To       string `json:"to"`
	Port     uint16 `json:"port"`
	Protocol string `json:"protocol"`
	Verdict  string `json:"verdict"`
}

// Matrix decides every ordered pair of pods (a pod with itself included)
// for every port, in endpoint order, pairs within each port.
func (t *Table) Matrix(ports []PortSpec) []MatrixEntry {
	out := make([]MatrixEntry, 0, len(ports)*len(t.spec.Endpoints)*len(t.spec.Endpoints))
	for _, p := range ports {
		for i := range t.spec.Endpoints {
			for j := range t.spec.Endpoints {
				src, dst := pairAddrs(&t.spec.Endpoints[i], &t.spec.Endpoints[j])
				v := "deny"
				if t.Lookup(src, dst, p.Protocol, p.Port).Allowed() {
					v = "allow"
				}
				out = append(out, MatrixEntry{
					From: t.spec.Endpoints[i].String(), To: t.spec.Endpoints[j].String(),
					Port: p.Port, Protocol: p.Protocol.String(), Verdict: v,
				})
			}
		}
	}
	return out
}

// pairAddrs picks the addresses a connection between two pods would use:
// the source's primary family when the destination has it, otherwise the
// destination's primary family when the source has it, otherwise each
// pod's primary address.
func pairAddrs(s, d *Endpoint) (netip.Addr, netip.Addr) {
	for _, fam := range [][]netip.Addr{s.IPs, d.IPs} {
		want := fam[0].Is4()
		var a, b netip.Addr
		for _, x := range s.IPs {
			if x.Is4() == want {
				a = x
				break
			}
		}
		for _, x := range d.IPs {
			if x.Is4() == want {
				b = x
				break
			}
		}
		if a.IsValid() && b.IsValid() {
			return a, b
		}
	}
	return s.IPs[0], d.IPs[0]
}

// WriteMatrixJSON prints entries as one JSON array.
func WriteMatrixJSON(w io.Writer, entries []MatrixEntry) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if entries == nil {
		entries = []MatrixEntry{}
	}
	return enc.Encode(entries)
}

// WriteMatrixTable prints one truth table per port: rows are sources,
// columns destinations, "." allowed and "X" denied.
func WriteMatrixTable(w io.Writer, entries []MatrixEntry) error {
	type key struct {
		port  uint16
		proto string
	}
	var order []key
	byPort := map[key][]MatrixEntry{}
	for _, e := range entries {
		k := key{e.Port, e.Protocol}
		if _, ok := byPort[k]; !ok {
			order = append(order, k)
		}
		byPort[k] = append(byPort[k], e)
	}
	for n, k := range order {
		if n > 0 {
			if _, err := fmt.Fprintln(w); err != nil {
				return err
			}
		}
		title := k.proto
		if k.port != 0 {
			title = fmt.Sprintf("%d/%s", k.port, k.proto)
		}
		if err := writeGrid(w, title, byPort[k]); err != nil {
			return err
		}
	}
	return nil
}

func writeGrid(w io.Writer, title string, cells []MatrixEntry) error {
	var names []string
	seen := map[string]bool{}
	verdict := map[[2]string]string{}
	for _, c := range cells {
		for _, n := range []string{c.From, c.To} {
			if !seen[n] {
				seen[n] = true
				names = append(names, n)
			}
		}
		verdict[[2]string{c.From, c.To}] = c.Verdict
	}
	if _, err := fmt.Fprintf(w, "%s (rows: from, columns: to; . allow, X deny)\n", title); err != nil {
		return err
	}
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprint(tw, "\t")
	for _, n := range names {
		fmt.Fprintf(tw, "%s\t", n)
	}
	fmt.Fprintln(tw)
	for _, from := range names {
		fmt.Fprintf(tw, "%s\t", from)
		for _, to := range names {
			mark := "?"
			switch verdict[[2]string{from, to}] {
			case "allow":
				mark = "."
			case "deny":
				mark = "X"
			}
			fmt.Fprintf(tw, "%s\t", mark)
		}
		fmt.Fprintln(tw)
	}
	return tw.Flush()
}
