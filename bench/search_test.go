package bench

import (
	"context"
	"errors"
	"math"
	"testing"
)

// fakePath forwards up to capacity packets per second and loses the rest;
// the generator reaches at most genMax.
func fakePath(capacity, genMax float64) RunTrial {
	return func(_ context.Context, rate float64) (Trial, error) {
		offered := math.Min(rate, genMax)
		delivered := math.Min(offered, capacity)
		sent := uint64(offered * 2)
		recv := uint64(delivered * 2)
		return Trial{Offered: offered, Delivered: delivered, Sent: sent, Received: recv,
			Loss: 1 - float64(recv)/float64(sent)}, nil
	}
}

func TestSearch(t *testing.T) {
	tests := []struct {
		name        string
		capacity    float64
		genMax      float64
		max         float64
		wantLimited bool
	}{
		{"gateway-limited", 300_000, 1_000_000, 1_000_000, false},
		{"close to max", 950_000, 1_000_000, 1_000_000, false},
		{"tiny capacity", 2_000, 1_000_000, 1_000_000, false},
		{"generator-limited", 2_000_000, 1_000_000, 1_000_000, true},
		{"generator slower than its nominal max", 2_000_000, 500_000, 1_000_000, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			cfg := SearchConfig{Max: tc.max, MaxTrials: 12}
			res, err := Search(context.Background(), cfg, fakePath(tc.capacity, tc.genMax))
			if err != nil {
				t.Fatal(err)
			}
			if res.GeneratorLimited != tc.wantLimited {
				t.Errorf("GeneratorLimited = %v, want %v", res.GeneratorLimited, tc.wantLimited)
			}
			limit := math.Min(tc.capacity, tc.genMax)
			if tc.wantLimited {
				if res.Rate != tc.max {
					t.Errorf("rate %.0f, want %.0f", res.Rate, tc.max)
				}
			} else if res.Rate > limit || res.Rate < limit*(1-0.06) {
				t.Errorf("rate %.0f, want within 6%% below %.0f (trials %+v)", res.Rate, limit, res.Trials)
			}
			if len(res.Trials) > cfg.MaxTrials {
				t.Errorf("%d trials, at most %d allowed", len(res.Trials), cfg.MaxTrials)
			}
			for _, tr := range res.Trials {
				if tr.Pass && math.Min(tr.Target, tr.Offered) > limit {
					t.Errorf("trial at %.0f passed above the limit %.0f", tr.Target, limit)
				}
			}
			if res.Saturated != math.Min(limit, tc.max) {
				t.Errorf("saturated %.0f, want %.0f", res.Saturated, math.Min(limit, tc.max))
			}
		})
	}
}

func TestSearchLossThreshold(t *testing.T) {
	// 0.05% loss at every rate passes, 0.2% fails.
	for _, tc := range []struct {
		loss float64
		pass bool
	}{{0.0005, true}, {0.002, false}} {
		run := func(_ context.Context, rate float64) (Trial, error) {
			return Trial{Offered: rate, Delivered: rate * (1 - tc.loss), Sent: 100000, Received: uint64(100000 * (1 - tc.loss)), Loss: tc.loss}, nil
		}
		res, err := Search(context.Background(), SearchConfig{Max: 1000, MaxTrials: 6}, run)
		if err != nil {
			t.Fatal(err)
		}
		if got := res.Rate > 0; got != tc.pass {
			t.Errorf("loss %v: passed %v, want %v (%+v)", tc.loss, got, tc.pass, res)
		}
	}
}

func TestSearchTrialError(t *testing.T) {
	boom := errors.New("boom")
	_, err := Search(context.Background(), SearchConfig{Max: 1000}, func(context.Context, float64) (Trial, error) {
		return Trial{}, boom
	})
	if !errors.Is(err, boom) {
		t.Fatalf("err = %v, want %v", err, boom)
	}
	if _, err := Search(context.Background(), SearchConfig{}, fakePath(1, 1)); err == nil {
		t.Fatal("no error without a maximum rate")
	}
}
