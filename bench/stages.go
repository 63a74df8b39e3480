package bench

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Stage moves the connection count linearly from where the previous stage
// left it to Target over Duration, as k6's ramping stages do. A stage with the
// previous target holds; one of zero duration jumps.
type Stage struct {
	Duration time.Duration `json:"duration"`
	Target   int           `json:"target"`
}

func (st Stage) String() string { return fmt.Sprintf("%v:%d", st.Duration, st.Target) }

// ParseStages parses "30s:10000,2m:10000,30s:0".
func ParseStages(s string) ([]Stage, error) {
	var out []Stage
	for f := range strings.SplitSeq(s, ",") {
		f = strings.TrimSpace(f)
		if f == "" {
			continue
		}
		ds, ns, ok := strings.Cut(f, ":")
		d, err := time.ParseDuration(ds)
		if !ok || err != nil || d < 0 {
			return nil, fmt.Errorf("bench: stage %q: want duration:connections, such as 30s:10000", f)
		}
		n, err := strconv.Atoi(ns)
		if err != nil || n < 0 {
			return nil, fmt.Errorf("bench: stage %q: connections must be a count of zero or more", f)
		}
		out = append(out, Stage{Duration: d, Target: n})
	}
	if len(out) == 0 {
		return nil, errors.New("bench: --stages names no stage")
	}
	return out, nil
}

// StageResult is one stage as it ran.
type StageResult struct {
	Stage    int     `json:"stage"` // from 1
	Duration float64 `json:"duration_seconds"`
	Target   int     `json:"target"`
	Reached  int64   `json:"reached"` // connections open at the stage's end
	Seconds  float64 `json:"seconds"` // how long the stage took
	Failed   uint64  `json:"failed"`  // connections that failed to open during it
	// RSS of the server at the stage's end, and its growth per connection
	// from before the run, if the server's memory is read.
	RSS        int64   `json:"rss,omitempty"`
	RSSPerConn float64 `json:"rss_per_conn,omitempty"`
}

// stageTick is how often a stage moves its count towards the line.
const stageTick = 100 * time.Millisecond

// stages runs Config.Stages: every tick it opens or closes connections to
// follow the line to each target, and at each stage's end it makes the count
// exact and records what was reached. atEnd, if set, runs after each stage.
func (r *run) stages(ctx context.Context, atEnd func(i int, sr *StageResult) error) error {
	cfg := r.cfg
	cur := 0
	for i, st := range cfg.Stages {
		from, t0 := cur, time.Now()
		r.setPhase(fmt.Sprintf("stage %d/%d →%d", i+1, len(cfg.Stages), st.Target))
		r.mu.Lock()
		r.target = st.Target
		r.mu.Unlock()
		before, _ := r.snapshot()
		for {
			frac := 1.0
			if st.Duration > 0 {
				frac = min(float64(time.Since(t0))/float64(st.Duration), 1)
			}
			want := from + int(math.Round(float64(st.Target-from)*frac))
			if cfg.Scenario == ScenarioChat {
				want -= want % cfg.RoomSize // whole rooms
				if frac == 1 {
					want = st.Target
				}
			}
			var err error
			switch {
			case want > cur:
				// The line paces the ramp; a jump (a stage of no duration)
				// goes at --rate.
				rate := 0.0
				if st.Duration == 0 {
					rate = cfg.Rate
				}
				_, _, err = r.connectAt(ctx, want-cur, rate)
			case want < cur:
				err = r.shrink(ctx, cur-want)
			}
			if err != nil {
				return fmt.Errorf("stage %d: %w", i+1, err)
			}
			cur = want
			if frac >= 1 {
				break
			}
			if err := sleep(ctx, stageTick); err != nil {
				return err
			}
		}
		s, _ := r.snapshot()
		sr := StageResult{Stage: i + 1, Duration: st.Duration.Seconds(), Target: st.Target, Reached: s.Open,
			Seconds: time.Since(t0).Seconds(), Failed: s.Failed - before.Failed}
		if atEnd != nil {
			if err := atEnd(i, &sr); err != nil {
				return err
			}
		}
		r.mu.Lock()
		r.res.Stages = append(r.res.Stages, sr)
		r.mu.Unlock()
		if sr.Failed > 0 {
			return fmt.Errorf("bench: stage %d: %d connections failed to open", i+1, sr.Failed)
		}
		if sr.Reached != int64(st.Target) && r.res.LostConns == 0 {
			return fmt.Errorf("bench: stage %d reached %d connections, not its target %d", i+1, sr.Reached, st.Target)
		}
	}
	return nil
}

// stagesDuration is the stages' total duration.
func (c *Config) stagesDuration() time.Duration {
	var d time.Duration
	for _, st := range c.Stages {
		d += st.Duration
	}
	return d
}
