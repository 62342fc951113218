package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"

	"github.com/spf13/cobra"

	"github.com/podgate/podgate/fastpath"
)

func newFlowsCommand() *cobra.Command {
	var addr, namespace, verdict, output string
	var follow bool
	cmd := &cobra.Command{
		Use:   "flows [--follow] [--namespace N] [--verdict deny|allow|evicted]",
		Short: "Show recent flow verdicts of a running agent",
		Long: `Show the verdicts on new flows (allowed, and denied once per flow) that a
running agent recorded, from its /flows endpoint on --addr (the agent's
--metrics-addr). With --follow, keep printing new ones until interrupted.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output, "table", "json"); err != nil {
				return err
			}
			if verdict != "" && verdict != "allow" && verdict != "deny" && verdict != "evicted" {
				return fmt.Errorf("--verdict %q: want allow, deny or evicted", verdict)
			}
			q := url.Values{}
			if namespace != "" {
				q.Set("namespace", namespace)
			}
			if verdict != "" {
				q.Set("verdict", verdict)
			}
			if follow {
				q.Set("follow", "true")
			}
			u := (&url.URL{Scheme: "http", Host: addr, Path: "/flows", RawQuery: q.Encode()}).String()
			ctx, stop := signalContext(cmd)
			defer stop()
			req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
			if err != nil {
				return fmt.Errorf("--addr %q: %w", addr, err)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				return fmt.Errorf("reach the agent at %s: %w", addr, err)
			}
			defer resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
				return fmt.Errorf("agent at %s: %s: %s", addr, resp.Status, strings.TrimSpace(string(b)))
			}
			return printFlows(cmd.OutOrStdout(), resp.Body, output == "json", ctx.Done())
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:9402", "the agent's --metrics-addr")
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new flows")
	cmd.Flags().StringVarP(&namespace, "namespace", "n", "", "only flows with an end in this namespace")
	cmd.Flags().StringVar(&verdict, "verdict", "", "only allow, deny or evicted")
	cmd.Flags().StringVarP(&output, "output", "o", "table", "table or json (one JSON object per line)")
	return cmd
}

// printFlows copies JSON lines or prints them as aligned rows, a row at a
// time so that --follow shows flows as they come.
func printFlows(w io.Writer, r io.Reader, raw bool, done <-chan struct{}) error {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	// Fixed-width columns rather than a tabwriter, so that each row can
	// be printed as it arrives.
	const row = "%-12s  %-16s  %-6s  %-34s  %-34s  %s\n"
	if !raw {
		fmt.Fprintf(w, row, "TIME", "VERDICT", "PROTO", "SOURCE", "DESTINATION", "DECIDED BY")
	}
	for sc.Scan() {
		if raw {
			fmt.Fprintln(w, sc.Text())
			continue
		}
		var rec fastpath.FlowRecord
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			return fmt.Errorf("decode flow record: %w", err)
		}
		verdict := strings.ToUpper(rec.Verdict)
		if rec.Direction != "" {
			verdict += " (" + rec.Direction + ")"
		}
		if rec.Reason == "unknown_endpoint" {
			verdict += " (unknown pod)"
		}
		if _, err := fmt.Fprintf(w, row, rec.Time.Format("15:04:05.000"), verdict, rec.Protocol,
			flowEnd(rec.Src), flowEnd(rec.Dst), strings.Join(rec.Policies, ", ")); err != nil {
			return err
		}
	}
	select {
	case <-done:
		return nil // interrupted while following
	default:
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("read flows: %w", err)
	}
	return nil
}

func flowEnd(e fastpath.FlowEnd) string {
	s := e.IP.String()
	if e.Port != 0 {
		if e.IP.Is6() {
			s = fmt.Sprintf("[%s]:%d", e.IP, e.Port)
		} else {
			s = fmt.Sprintf("%s:%d", e.IP, e.Port)
		}
	}
	if e.Pod != "" {
		s = e.Namespace + "/" + e.Pod + " " + s
	}
	return s
}
