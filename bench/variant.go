package bench

import (
	"context"
	"errors"
	"fmt"
	"os/exec"
	"slices"
	"strings"
	"time"
)

// Variant is a podgate agent configuration measured besides the agent
// with its default flags: the same bench, the agent started with extra
// arguments. Its results carry the enforcer name [Variant.Enforcer]
// ("podgate-" and the name), never "podgate".
type Variant struct {
	// Name is lower-case letters, digits and dashes (not first), e.g.
	// "offload-none".
	Name string `json:"name"`
	// Args are appended to the agent's arguments (after Config.AgentArgs).
	Args []string `json:"agent_args"`
}

// Enforcer returns the enforcer name of the variant's results:
// "podgate-NAME".
func (v Variant) Enforcer() string { return EnforcerPodgate + "-" + v.Name }

// DefaultVariants returns the variants a bench measures unless told
// otherwise: the agent with every packet kept in Go (--offload=none), the
// comparison switch of the kernel flow offload.
func DefaultVariants() []Variant {
	return []Variant{{Name: "offload-none", Args: []string{"--offload=none"}}}
}

// ParseVariant parses "NAME=ARGS", ARGS being agent arguments separated by
// spaces, e.g. "busy-poll=--busy-poll=1ms" or
// "tuned=--busy-poll=5ms --xsk-ring-size=4096".
func ParseVariant(s string) (Variant, error) {
	name, args, ok := strings.Cut(s, "=")
	if !ok {
		return Variant{}, fmt.Errorf("variant %q: want NAME=ARGS, e.g. busy-poll=--busy-poll=1ms", s)
	}
	v := Variant{Name: name, Args: strings.Fields(args)}
	if err := v.validate(); err != nil {
		return Variant{}, err
	}
	return v, nil
}

func (v Variant) validate() error {
	if v.Name == "" || len(v.Name) > 40 {
		return fmt.Errorf("variant %q: the name must have 1 to 40 characters", v.Name)
	}
	for i, c := range v.Name {
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' && i > 0) {
			return fmt.Errorf("variant %q: the name may only have lower-case letters, digits and dashes, and starts with a letter or digit", v.Name)
		}
	}
	if len(v.Args) == 0 {
		return fmt.Errorf("variant %q: no agent arguments (it would measure the default agent again)", v.Name)
	}
	return nil
}

// validateVariants checks every variant and that names are unique.
func validateVariants(vs []Variant) error {
	var errs []error
	seen := map[string]bool{}
	for _, v := range vs {
		if err := v.validate(); err != nil {
			errs = append(errs, err)
			continue
		}
		if seen[v.Name] {
			errs = append(errs, fmt.Errorf("variant %q: given twice", v.Name))
		}
		seen[v.Name] = true
	}
	return errors.Join(errs...)
}

// podgateRun is one agent configuration to measure: the default agent or
// a variant.
type podgateRun struct {
	enforcer string
	args     []string // Config.AgentArgs, then the variant's
}

// podgateRuns returns the agent configurations the config measures, the
// default agent first, in the order of Config.Variants.
func (c Config) podgateRuns() []podgateRun {
	var out []podgateRun
	if slices.Contains(c.Enforcers, EnforcerPodgate) {
		out = append(out, podgateRun{enforcer: EnforcerPodgate, args: slices.Clone(c.AgentArgs)})
	}
	for _, v := range c.Variants {
		if slices.Contains(c.Enforcers, v.Enforcer()) {
			out = append(out, podgateRun{enforcer: v.Enforcer(), args: append(slices.Clone(c.AgentArgs), v.Args...)})
		}
	}
	return out
}

// knownEnforcers returns none, iptables, podgate and the variants'
// enforcer names.
func (c Config) knownEnforcers() []string {
	out := enforcers()
	for _, v := range c.Variants {
		out = append(out, v.Enforcer())
	}
	return out
}

// checkAgentArgs runs `BINARY agent ARGS... --help` for every agent
// configuration, so that a flag the agent does not know, or a value it
// cannot parse, stops the bench before anything is measured, naming the
// configuration. Values that parse but that the agent refuses (out of
// range) are caught when the agent starts.
func checkAgentArgs(ctx context.Context, binary string, runs []podgateRun) error {
	var errs []error
	for _, r := range runs {
		cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		cmd := exec.CommandContext(cctx, binary, append(append([]string{"agent"}, r.args...), "--help")...)
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			msg := strings.TrimSpace(string(out))
			if first, _, ok := strings.Cut(msg, "\n"); ok {
				msg = first
			}
			errs = append(errs, fmt.Errorf("%s: %s agent rejects the arguments %q: %w: %s", r.enforcer, binary, r.args, err, msg))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("bench: %w", errors.Join(errs...))
	}
	return nil
}
