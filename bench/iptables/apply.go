package iptables

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/podgate/podgate/internal/netns"
)

// Clear restores an empty filter table and destroys every ipset in ns:
// ns must be a namespace of the caller's own (a lab's node), where all of
// them are the caller's.
func Clear(ctx context.Context, ns *netns.Namespace) error {
	const empty = "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
	if _, err := ns.Run(ctx, empty, "iptables-legacy-restore"); err != nil {
		return fmt.Errorf("clear iptables: %w", err)
	}
	if _, err := ns.Run(ctx, "", "ipset", "destroy"); err != nil {
		return fmt.Errorf("clear ipsets: %w", err)
	}
	return nil
}

// Apply loads the sets and the rules of r into ns and returns how long
// that took.
func Apply(ctx context.Context, ns *netns.Namespace, r *Rules) (time.Duration, error) {
	start := time.Now()
	if r.IPSet != "" {
		if _, err := ns.Run(ctx, r.IPSet, "ipset", "restore"); err != nil {
			return 0, fmt.Errorf("apply ipsets: %w", err)
		}
	}
	if _, err := ns.Run(ctx, r.IPTables, "iptables-legacy-restore"); err != nil {
		return 0, fmt.Errorf("apply iptables: %w", err)
	}
	return time.Since(start), nil
}

// SetMemory sums the kernel memory of the sets in ns as `ipset list -t`
// reports it.
func SetMemory(ctx context.Context, ns *netns.Namespace) (float64, error) {
	out, err := ns.Run(ctx, "", "ipset", "list", "-t")
	if err != nil {
		return 0, fmt.Errorf("measure ipset memory: %w", err)
	}
	var total float64
	for _, line := range strings.Split(string(out), "\n") {
		if v, ok := strings.CutPrefix(line, "Size in memory: "); ok {
			n, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				total += n
			}
		}
	}
	return total, nil
}
