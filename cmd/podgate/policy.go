package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"k8s.io/apimachinery/pkg/api/resource"

	"github.com/podgate/podgate/policy"
	"github.com/podgate/podgate/policy/table"
)

func newPolicyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "policy",
		Short: "Evaluate NetworkPolicies and ClusterNetworkPolicies in manifest files: matrix, check, lint",
		Long: `Evaluate the policies in manifest files: NetworkPolicy (networking.k8s.io/v1)
and the cluster policies of sigs.k8s.io/network-policy-api: ClusterNetworkPolicy
(policy.networking.k8s.io/v1beta1 and v1alpha2) and the v1alpha1
AdminNetworkPolicy and BaselineAdminNetworkPolicy. The Admin tier is evaluated
before NetworkPolicy, the Baseline tier only for pods that no NetworkPolicy
selects for the direction; the default allows.`,
	}
	lim := &manifestLimits{}
	lim.addFlags(cmd.PersistentFlags())
	cmd.AddCommand(newMatrixCommand(lim), newCheckCommand(lim), newLintCommand(lim))
	return cmd
}

// manifestLimits are the flags that bound the manifest files a command
// reads (see policy.Loader).
type manifestLimits struct{ file, total byteSize }

func (l *manifestLimits) addFlags(fs *pflag.FlagSet) {
	l.file, l.total = byteSize(policy.DefaultMaxFileBytes), byteSize(policy.DefaultMaxTotalBytes)
	fs.Var(&l.file, "manifest-file-limit", "largest manifest file read, in bytes or with a suffix (64Mi, 1Gi)")
	fs.Var(&l.total, "manifest-total-limit", "largest size of all manifest files together, in bytes or with a suffix")
}

func (l *manifestLimits) loader() policy.Loader {
	return policy.Loader{
		MaxFileBytes: int64(l.file), MaxTotalBytes: int64(l.total),
		FileLimitName: "--manifest-file-limit", TotalLimitName: "--manifest-total-limit",
	}
}

// byteSize is a flag value of bytes, given as a Kubernetes quantity
// (1048576, 64Mi, 1G).
type byteSize int64

func (b *byteSize) String() string {
	return resource.NewQuantity(int64(*b), resource.BinarySI).String()
}

func (b *byteSize) Set(s string) error {
	q, err := resource.ParseQuantity(s)
	if err != nil {
		return fmt.Errorf("parse size: %w", err)
	}
	v, ok := q.AsInt64()
	if !ok || v <= 0 {
		return fmt.Errorf("size %s: want a positive number of bytes", s)
	}
	*b = byteSize(v)
	return nil
}

func (b *byteSize) Type() string { return "bytes" }

// loadManifests reads and compiles manifests, printing notes and warnings
// on stderr. readKinds are kinds the caller reads itself (no "skipped"
// note for them).
func loadManifests(stderr io.Writer, lim *manifestLimits, paths []string, readKinds ...string) (*policy.Manifests, *table.Table, error) {
	m, err := lim.loader().Load(paths...)
	if err != nil {
		return nil, nil, err
	}
	for _, n := range append(m.Notes, m.SkippedNotes(readKinds...)...) {
		fmt.Fprintln(stderr, "note:", n)
	}
	t, err := policy.Compile(&m.Cluster)
	if err != nil {
		return nil, nil, err
	}
	for _, w := range t.Warnings() {
		fmt.Fprintln(stderr, "warning:", w)
	}
	return m, t, nil
}

func checkOutput(o string, allowed ...string) error {
	for _, a := range allowed {
		if o == a {
			return nil
		}
	}
	return fmt.Errorf("--output %q: want one of %s", o, strings.Join(allowed, ", "))
}

func newMatrixCommand(lim *manifestLimits) *cobra.Command {
	var files []string
	var ports, output string
	cmd := &cobra.Command{
		Use:   "matrix -f PATH [-f PATH ...] --ports 80/TCP,81/UDP,80/SCTP [-o table|json]",
		Short: "Print the verdict for every ordered pair of pods and every port",
		Long: `Print the verdict for every ordered pair of pods that have an IP (a pod
to itself included) and every port. PATH is a YAML or JSON file or a
directory of them; multi-document YAML and kind: List are accepted.

-o json prints one JSON array of {"from","to","port","protocol","verdict"}
objects; -o table prints one truth table per port (rows are sources,
columns destinations, "." allowed, "X" denied).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, "table", "json"); err != nil {
				return err
			}
			specs, err := table.ParsePortSpecs(ports)
			if err != nil {
				return fmt.Errorf("--ports: %w", err)
			}
			_, t, err := loadManifests(cmd.ErrOrStderr(), lim, files)
			if err != nil {
				return err
			}
			entries := t.Matrix(specs)
			if output == "json" {
				return table.WriteMatrixJSON(cmd.OutOrStdout(), entries)
			}
			return table.WriteMatrixTable(cmd.OutOrStdout(), entries)
		},
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "manifest file or directory (repeatable)")
	cmd.Flags().StringVar(&ports, "ports", "80/TCP", "comma-separated PORT/PROTOCOL list; ICMP alone for ICMP")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	_ = cmd.MarkFlagRequired("filename")
	return cmd
}

// errDenied makes `policy check` exit with status 2 after printing a deny
// verdict.
var errDenied = &exitError{code: 2}

type exitError struct{ code int }

func (e *exitError) Error() string { return fmt.Sprintf("exit status %d", e.code) }

func newCheckCommand(lim *manifestLimits) *cobra.Command {
	var files []string
	var from, to, proto, output string
	var port int
	cmd := &cobra.Command{
		Use:   "check -f PATH --from ns/pod|IP --to ns/pod|IP --port N --protocol P [-o json]",
		Short: "Decide one connection and explain the verdict",
		Long: `Decide one connection and explain it: which policies select each side,
which rule allowed it, or which isolation denied it; with cluster policies,
which tier decided (Admin, NetworkPolicy, Baseline or the default), by which
rule, and which Pass rules handed the decision on. An IP that is no pod's is
an address outside the cluster. Exits 0 when allowed, 2 when denied and 1 on
errors.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, "text", "json"); err != nil {
				return err
			}
			p, err := table.ParseProtocol(proto)
			if err != nil {
				return fmt.Errorf("--protocol: %w", err)
			}
			if p.HasPorts() && (port < 1 || port > 65535) {
				return fmt.Errorf("--port: must be from 1 to 65535 for %s", p)
			}
			if !p.HasPorts() && cmd.Flags().Changed("port") {
				return fmt.Errorf("--port: %s has no ports", p)
			}
			_, t, err := loadManifests(cmd.ErrOrStderr(), lim, files)
			if err != nil {
				return err
			}
			src, dst, err := resolvePair(t, from, to)
			if err != nil {
				return err
			}
			e := t.Explain(src, dst, p, uint16(port))
			if output == "json" {
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				err = enc.Encode(e)
			} else {
				err = e.WriteText(cmd.OutOrStdout())
			}
			if err != nil {
				return err
			}
			if e.Verdict != "allow" {
				return errDenied
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "manifest file or directory (repeatable)")
	cmd.Flags().StringVar(&from, "from", "", "source: namespace/pod or an IP address")
	cmd.Flags().StringVar(&to, "to", "", "destination: namespace/pod or an IP address")
	cmd.Flags().IntVar(&port, "port", 0, "destination port (TCP, UDP, SCTP)")
	cmd.Flags().StringVar(&proto, "protocol", "TCP", "TCP, UDP, SCTP, ICMP or ICMPv6")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	for _, f := range []string{"filename", "from", "to"} {
		_ = cmd.MarkFlagRequired(f)
	}
	return cmd
}

// resolvePair turns --from and --to into addresses. A pod name gives the
// pod's address of the family the other side uses.
func resolvePair(t *table.Table, from, to string) (netip.Addr, netip.Addr, error) {
	fromEP, fromAddr, err := resolveSide(t, "--from", from)
	if err != nil {
		return netip.Addr{}, netip.Addr{}, err
	}
	toEP, toAddr, err := resolveSide(t, "--to", to)
	if err != nil {
		return netip.Addr{}, netip.Addr{}, err
	}
	pick := func(e *table.Endpoint, want bool) (netip.Addr, bool) {
		for _, a := range e.IPs {
			if a.Is4() == want {
				return a, true
			}
		}
		return netip.Addr{}, false
	}
	switch {
	case fromEP != nil && toEP != nil:
		fromAddr = fromEP.IPs[0]
		if a, ok := pick(toEP, fromAddr.Is4()); ok {
			toAddr = a
		} else {
			toAddr = toEP.IPs[0]
			if a, ok := pick(fromEP, toAddr.Is4()); ok {
				fromAddr = a
			}
		}
	case fromEP != nil:
		a, ok := pick(fromEP, toAddr.Is4())
		if !ok {
			return netip.Addr{}, netip.Addr{}, fmt.Errorf("--from %s: pod has no address of the family of %s", from, toAddr)
		}
		fromAddr = a
	case toEP != nil:
		a, ok := pick(toEP, fromAddr.Is4())
		if !ok {
			return netip.Addr{}, netip.Addr{}, fmt.Errorf("--to %s: pod has no address of the family of %s", to, fromAddr)
		}
		toAddr = a
	}
	if fromAddr.Is4() != toAddr.Is4() {
		return netip.Addr{}, netip.Addr{}, fmt.Errorf("--from %s and --to %s are of different IP families", fromAddr, toAddr)
	}
	return fromAddr, toAddr, nil
}

func resolveSide(t *table.Table, flag, s string) (*table.Endpoint, netip.Addr, error) {
	if a, err := netip.ParseAddr(s); err == nil {
		return nil, a.Unmap(), nil
	}
	ns, name, ok := strings.Cut(s, "/")
	if !ok || ns == "" || name == "" {
		return nil, netip.Addr{}, fmt.Errorf("%s %q: want namespace/pod or an IP address", flag, s)
	}
	i, ok := t.EndpointByName(ns, name)
	if !ok {
		return nil, netip.Addr{}, fmt.Errorf("%s %s: no such pod with an IP (pods without an IP, hostNetwork pods and terminated pods take no part in policy)", flag, s)
	}
	return t.Endpoint(i), netip.Addr{}, nil
}

func newLintCommand(lim *manifestLimits) *cobra.Command {
	var files []string
	var output string
	var failOnWarning bool
	cmd := &cobra.Command{
		Use:   "lint -f PATH [-f PATH ...]",
		Short: "Warn about policy mistakes: blocked DNS, selectors matching nothing, ORed peers, shadowed cluster policy rules, Baseline denies in force",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, "text", "json"); err != nil {
				return err
			}
			m, err := lim.loader().Load(files...)
			if err != nil {
				return err
			}
			for _, n := range append(m.Notes, m.SkippedNotes()...) {
				fmt.Fprintln(cmd.ErrOrStderr(), "note:", n)
			}
			t, err := policy.Compile(&m.Cluster)
			if err != nil {
				return err
			}
			findings := policy.Lint(&m.Cluster, t)
			if output == "json" {
				if findings == nil {
					findings = []policy.Finding{}
				}
				enc := json.NewEncoder(cmd.OutOrStdout())
				enc.SetIndent("", "  ")
				if err := enc.Encode(findings); err != nil {
					return err
				}
			} else {
				for _, f := range findings {
					fmt.Fprintln(cmd.OutOrStdout(), "warning:", f)
				}
				if len(findings) == 0 {
					fmt.Fprintln(cmd.OutOrStdout(), "no findings")
				}
			}
			if failOnWarning && len(findings) > 0 {
				return fmt.Errorf("%d lint findings", len(findings))
			}
			return nil
		},
	}
	cmd.Flags().StringArrayVarP(&files, "filename", "f", nil, "manifest file or directory (repeatable)")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	cmd.Flags().BoolVar(&failOnWarning, "fail-on-warning", false, "exit with status 1 when there are findings")
	_ = cmd.MarkFlagRequired("filename")
	return cmd
}

// exitCode returns the status an error should end the process with.
func exitCode(err error) int {
	var ee *exitError
	if errors.As(err, &ee) {
		return ee.code
	}
	return 1
}
