package bench

import (
	"context"
	"errors"
	"fmt"
)

// DefaultMaxLoss is the loss below which an offered rate counts as
// forwarded: 0.1%.
const DefaultMaxLoss = 0.001

// Trial is one step of a rate search: a generator offered Target packets
// per second for a few seconds.
type Trial struct {
	// Target is the rate asked of the generator; Offered what it sent
	// (packets sent / elapsed), Delivered what reached the sink per second.
	Target    float64 `json:"target_pps"`
	Offered   float64 `json:"offered_pps"`
	Delivered float64 `json:"delivered_pps"`
	Sent      uint64  `json:"sent"`
	Received  uint64  `json:"received"`
	// Loss is 1 - Received/Sent.
	Loss float64 `json:"loss"`
	// Pass says the trial counts as forwarded: loss below the search's
	// MaxLoss. The rate it passed at is the smaller of Target and
	// Offered: the path can slow the generator down (part of the path's
	// work runs in the generator's sendto), and then the target was not
	// reached.
	Pass bool `json:"pass"`
	// Drops are the counters that grew during the trial: the veths' drop
	// counters (where lost packets went) and, with the agent, "agent
	// run-queue wait µs", the time its threads were runnable but waited
	// for a CPU.
	Drops map[string]uint64 `json:"drops,omitempty"`
}

// SearchConfig bounds a rate search.
type SearchConfig struct {
	// Max is the highest rate tried: the generator's capacity.
	Max float64
	// Min is the lowest rate worth trying; below it the search gives up
	// and reports 0.
	Min float64
	// MaxLoss is the loss a passing trial stays below (default 0.1%).
	MaxLoss float64
	// Tolerance ends the search once the bracket [pass, fail] is narrower
	// than this fraction of the failing rate (default 0.03).
	Tolerance float64
	// MaxTrials bounds the number of trials (default 10).
	MaxTrials int
}

func (c SearchConfig) withDefaults() SearchConfig {
	if c.MaxLoss == 0 {
		c.MaxLoss = DefaultMaxLoss
	}
	if c.Tolerance == 0 {
		c.Tolerance = 0.03
	}
	if c.MaxTrials == 0 {
		c.MaxTrials = 10
	}
	if c.Min == 0 {
		c.Min = c.Max / 1000
	}
	return c
}

// SearchResult is the outcome of a rate search.
type SearchResult struct {
	// Rate is the highest rate with less than MaxLoss loss (the smaller
	// of target and offered; 0 if none passed), and
	// Delivered the rate that reached the sink in that trial.
	Rate      float64 `json:"rate_pps"`
	Delivered float64 `json:"delivered_pps"`
	// Saturated is the delivered rate of the first trial, at Max: what the
	// path forwards when offered everything the generator has, loss
	// allowed.
	Saturated float64 `json:"saturated_pps"`
	// GeneratorLimited says even Max passed: the path is faster than the
	// generator, and Rate is a lower bound.
	GeneratorLimited bool    `json:"generator_limited"`
	Trials           []Trial `json:"trials"`
}

// RunTrial offers a rate for one step and reports what happened. It fills
// every field of Trial except Pass, which the search decides.
type RunTrial func(ctx context.Context, rate float64) (Trial, error)

// Search finds the highest rate with less than MaxLoss loss. The first
// trial offers Max; if it passes, the path is generator-limited. Otherwise
// the next trial offers 95% of what the first one delivered (a saturated
// path delivers about what it can forward). Then, while nothing passed, it
// steps down by 30% (by half from the fourth trial on); while the lowest failing rate is more than 25% above
// the highest passing one, it steps up by 10%; after that it bisects. It
// stops when the bracket is within Tolerance of the failing rate or after
// MaxTrials trials.
func Search(ctx context.Context, cfg SearchConfig, run RunTrial) (SearchResult, error) {
	cfg = cfg.withDefaults()
	if cfg.Max <= 0 {
		return SearchResult{}, errors.New("rate search: no maximum rate")
	}
	var res SearchResult
	try := func(rate float64) (bool, error) {
		t, err := run(ctx, rate)
		if err != nil {
			return false, fmt.Errorf("rate search: trial at %.0f pps: %w", rate, err)
		}
		t.Target = rate
		t.Pass = t.Sent > 0 && t.Loss < cfg.MaxLoss
		res.Trials = append(res.Trials, t)
		if r := min(rate, t.Offered); t.Pass && r > res.Rate {
			res.Rate, res.Delivered = r, t.Delivered
		}
		// For the bracket, a target the generator did not reach (below
		// 97%) counts as failed.
		return t.Pass && t.Offered >= 0.97*rate, nil
	}
	ok, err := try(cfg.Max)
	if err != nil {
		return res, err
	}
	res.Saturated = res.Trials[0].Delivered
	if ok {
		res.GeneratorLimited = true
		return res, nil
	}
	lo, hi := 0.0, cfg.Max
	next := 0.95 * res.Trials[0].Delivered
	if next < cfg.Min || next >= hi {
		next = hi / 2
	}
	for len(res.Trials) < cfg.MaxTrials {
		if err := ctx.Err(); err != nil {
			return res, fmt.Errorf("rate search: %w", err)
		}
		ok, err := try(next)
		if err != nil {
			return res, err
		}
		if ok {
			lo = next
		} else {
			hi = next
		}
		if lo > 0 && hi-lo <= cfg.Tolerance*hi {
			break
		}
		switch {
		case lo == 0:
			if hi < cfg.Min {
				return res, nil
			}
			// Nothing passed yet: step down by 30%, by half after
			// three failures.
			next = 0.7 * hi
			if len(res.Trials) >= 3 {
				next = 0.5 * hi
			}
		case hi > 1.25*lo:
			next = 1.1 * lo // far from the failing rate: step up
		default:
			next = (lo + hi) / 2
		}
	}
	return res, nil
}
