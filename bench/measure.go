package bench

import (
	"bufio"
	"context"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/internal/netns"
)

// forwardingTrial returns a [RunTrial] that offers a rate with the
// generator for step and counts what the sink saw. Successive trials go on
// round-robin through the flows where the previous one stopped, so that
// with many flows every flow is refreshed in turn. drops, if not nil,
// reads counters whose growth during the trial is recorded.
func forwardingTrial(g *Generator, s *Sink, step time.Duration, firstFlow, flows int, drops func() (map[string]uint64, error)) RunTrial {
	next := 0
	return func(ctx context.Context, rate float64) (Trial, error) {
		var d0 map[string]uint64
		if drops != nil {
			var err error
			if d0, err = drops(); err != nil {
				return Trial{}, err
			}
		}
		c0, err := s.Count()
		if err != nil {
			return Trial{}, err
		}
		sent, err := g.Send(ctx, Offer{Rate: rate, Duration: step, FirstFlow: firstFlow, Flows: flows, Resume: next})
		if err != nil {
			return Trial{}, err
		}
		next = sent.Next
		// Frames in flight (rings, the agent's batch) arrive within
		// milliseconds; 200 ms is plenty.
		select {
		case <-ctx.Done():
			return Trial{}, ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
		c1, err := s.Count()
		if err != nil {
			return Trial{}, err
		}
		recv := c1 - c0
		t := Trial{Sent: sent.Frames, Received: recv, Offered: sent.Rate()}
		if sent.Elapsed > 0 {
			t.Delivered = float64(recv) / sent.Elapsed.Seconds()
		}
		if sent.Frames > 0 {
			t.Loss = 1 - float64(recv)/float64(sent.Frames)
		}
		if drops != nil {
			d1, err := drops()
			if err != nil {
				return Trial{}, err
			}
			for k, v := range d1 {
				if v > d0[k] {
					if t.Drops == nil {
						t.Drops = map[string]uint64{}
					}
					t.Drops[k] = v - d0[k]
				}
			}
		}
		return t, nil
	}
}

// IPerf is the outcome of one iperf3 TCP run.
type IPerf struct {
	BitsPerSecond float64 `json:"bits_per_second"`
	Retransmits   int     `json:"retransmits"`
	Seconds       float64 `json:"seconds"`
}

// runIPerf runs `iperf3 -s -1` in the server's namespace and `iperf3 -c`
// in the client's for d, both pinned to cpus, and returns the receiver's
// rate.
func runIPerf(ctx context.Context, client, server *netns.Namespace, cIP, sIP netip.Addr, d time.Duration, cpus unix.CPUSet) (IPerf, error) {
	ctx, cancel := context.WithTimeout(ctx, d+30*time.Second)
	defer cancel()
	port := strconv.Itoa(IPerfPort)
	srv := exec.CommandContext(ctx, "iperf3", "-s", "-1", "-B", sIP.String(), "-p", port)
	var srvOut strings.Builder
	srv.Stdout, srv.Stderr = &srvOut, &srvOut
	if err := server.Start(srv); err != nil {
		return IPerf{}, fmt.Errorf("iperf3 server: %w", err)
	}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Wait() }()
	defer func() {
		_ = srv.Process.Kill()
		<-srvDone
	}()
	_ = pinProcess(srv.Process.Pid, cpus)
	if err := waitListening(ctx, server, IPerfPort); err != nil {
		return IPerf{}, fmt.Errorf("iperf3 server: %w: %s", err, srvOut.String())
	}
	secs := strconv.Itoa(max(1, int(d.Round(time.Second)/time.Second)))
	cl := exec.CommandContext(ctx, "iperf3", "-c", sIP.String(), "-B", cIP.String(), "-p", port, "-t", secs, "-J")
	var out, errb strings.Builder
	cl.Stdout, cl.Stderr = &out, &errb
	if err := client.Start(cl); err != nil {
		return IPerf{}, fmt.Errorf("iperf3 client: %w", err)
	}
	_ = pinProcess(cl.Process.Pid, cpus)
	werr := cl.Wait()
	var res struct {
		Error string `json:"error"`
		End   struct {
			SumSent struct {
				Retransmits int     `json:"retransmits"`
				Seconds     float64 `json:"seconds"`
			} `json:"sum_sent"`
			SumReceived struct {
				BitsPerSecond float64 `json:"bits_per_second"`
				Seconds       float64 `json:"seconds"`
			} `json:"sum_received"`
		} `json:"end"`
	}
	if err := json.Unmarshal([]byte(out.String()), &res); err != nil {
		return IPerf{}, fmt.Errorf("iperf3 client: %v: parse JSON: %w: %s", werr, err, errb.String())
	}
	if res.Error != "" || werr != nil {
		return IPerf{}, fmt.Errorf("iperf3 client: %v: %s", werr, res.Error)
	}
	return IPerf{
		BitsPerSecond: res.End.SumReceived.BitsPerSecond,
		Retransmits:   res.End.SumSent.Retransmits,
		Seconds:       res.End.SumReceived.Seconds,
	}, nil
}

// waitListening waits until a TCP socket listens on port in ns.
func waitListening(ctx context.Context, ns *netns.Namespace, port int) error {
	want := fmt.Sprintf(":%04X ", port)
	for {
		var found bool
		err := ns.Do(func() error {
			f, err := os.Open("/proc/thread-self/net/tcp")
			if err != nil {
				return err
			}
			defer f.Close()
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				fields := strings.Fields(sc.Text())
				if len(fields) > 3 && strings.HasSuffix(fields[1]+" ", want) && fields[3] == "0A" {
					found = true
				}
			}
			return sc.Err()
		})
		if err != nil {
			return fmt.Errorf("wait for port %d: %w", port, err)
		}
		if found {
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("wait for port %d: %w", port, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
}

// ConnRate is the outcome of a connection-rate run: with several trials
// ([connTrials]), PerSecond is the median trial's rate and Completed,
// Failed and Seconds are summed over the trials.
type ConnRate struct {
	PerSecond float64 `json:"connections_per_second"`
	Completed uint64  `json:"completed"`
	Failed    uint64  `json:"failed"`
	Workers   int     `json:"workers"`
	Seconds   float64 `json:"seconds"`
	// Trials are the rates of the trials, in the order they ran.
	Trials []float64 `json:"trials_per_second,omitempty"`
}

// connTrials is how many connection-rate trials a measurement runs: one
// short run on a shared machine moved by ±30% between runs, more than
// the enforcers differ; the median of three moves less.
const connTrials = 3

// runConnRateTrials runs runConnRate n times and reports the median
// trial's rate.
func runConnRateTrials(ctx context.Context, n int, client, server *netns.Namespace, sIP netip.Addr, workers int, d time.Duration) (ConnRate, error) {
	var out ConnRate
	for range n {
		cr, err := runConnRate(ctx, client, server, sIP, workers, d)
		if err != nil {
			return ConnRate{}, err
		}
		out.Completed += cr.Completed
		out.Failed += cr.Failed
		out.Seconds += cr.Seconds
		out.Workers = cr.Workers
		out.Trials = append(out.Trials, cr.PerSecond)
	}
	sorted := slices.Sorted(slices.Values(out.Trials))
	out.PerSecond = sorted[len(sorted)/2]
	return out, nil
}

// runConnRate serves TCP on the server's ConnPort (accept, read a byte,
// answer a byte, wait for the close) and has workers in the client's
// namespace each open a connection, send a byte, read the answer and close
// it with a reset (SO_LINGER 0, so no TIME_WAIT exhausts the ports), as
// fast as they can for d.
func runConnRate(ctx context.Context, client, server *netns.Namespace, sIP netip.Addr, workers int, d time.Duration) (ConnRate, error) {
	var ln net.Listener
	err := server.Do(func() error {
		var err error
		ln, err = net.Listen("tcp4", netip.AddrPortFrom(sIP, ConnPort).String())
		return err
	})
	if err != nil {
		return ConnRate{}, fmt.Errorf("connection rate: listen: %w", err)
	}
	var handlers sync.WaitGroup
	acceptDone := make(chan struct{})
	go func() {
		defer close(acceptDone)
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			handlers.Go(func() {
				defer c.Close()
				_ = c.SetDeadline(time.Now().Add(5 * time.Second))
				var b [1]byte
				if _, err := io.ReadFull(c, b[:]); err != nil {
					return
				}
				if _, err := c.Write(b[:]); err != nil {
					return
				}
				_, _ = c.Read(b[:]) // until the client's reset
			})
		}
	}()
	defer func() {
		ln.Close()
		<-acceptDone
		handlers.Wait()
	}()

	var done, failed atomic.Uint64
	dst := &unix.SockaddrInet4{Port: ConnPort, Addr: sIP.As4()}
	deadline := time.Now().Add(d)
	var wg sync.WaitGroup
	errs := make([]error, workers)
	start := time.Now()
	for w := range workers {
		wg.Go(func() {
			errs[w] = client.Do(func() error {
				for time.Now().Before(deadline) && ctx.Err() == nil {
					if err := oneConn(dst); err != nil {
						if failed.Add(1) > 1000 && done.Load() == 0 {
							return fmt.Errorf("no connection succeeds: %w", err)
						}
						continue
					}
					done.Add(1)
				}
				return nil
			})
		})
	}
	wg.Wait()
	elapsed := time.Since(start)
	if err := errors.Join(errs...); err != nil {
		return ConnRate{}, fmt.Errorf("connection rate: %w", err)
	}
	return ConnRate{
		PerSecond: float64(done.Load()) / elapsed.Seconds(),
		Completed: done.Load(), Failed: failed.Load(),
		Workers: workers, Seconds: elapsed.Seconds(),
	}, nil
}

// oneConn opens, uses and resets one connection with blocking system
// calls on the calling thread (which is in the client's namespace).
func oneConn(dst *unix.SockaddrInet4) error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("socket: %w", err)
	}
	defer unix.Close(fd)
	tv := unix.NsecToTimeval(int64(time.Second))
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &tv)
	_ = unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv)
	if err := unix.Connect(fd, dst); err != nil {
		return fmt.Errorf("connect: %w", err)
	}
	b := []byte{1}
	if _, err := unix.Write(fd, b); err != nil {
		return fmt.Errorf("write: %w", err)
	}
	if n, err := unix.Read(fd, b); err != nil || n != 1 {
		return fmt.Errorf("read: %d, %w", n, err)
	}
	_ = unix.SetsockoptLinger(fd, unix.SOL_SOCKET, unix.SO_LINGER, &unix.Linger{Onoff: 1, Linger: 0})
	return nil
}

// Latency is the round-trip time distribution of a UDP ping-pong run, in
// microseconds. A measurement of several trials ([mergeLatency]) pools
// their samples: the percentiles, counts and samples are of every trial
// together, and Trials keeps each trial's own.
type Latency struct {
	P50     float64        `json:"p50_us"`
	P90     float64        `json:"p90_us"`
	P99     float64        `json:"p99_us"`
	Max     float64        `json:"max_us"`
	Sent    int            `json:"sent"`
	Lost    int            `json:"lost"`
	Rate    float64        `json:"rate_per_second"`
	Samples []float64      `json:"samples_us"`
	Trials  []LatencyTrial `json:"trials,omitempty"`
}

// LatencyTrial is one trial of a latency measurement.
type LatencyTrial struct {
	P50  float64 `json:"p50_us"`
	P99  float64 `json:"p99_us"`
	Max  float64 `json:"max_us"`
	Sent int     `json:"sent"`
	Lost int     `json:"lost"`
}

// latencyTrials is how many latency trials a measurement runs, spread
// over the enforcer's measurements: on this lab's shared VM the machine
// switches between a fast and a slow state for seconds at a time (plain
// routing's p99 moved between 43 and 107 µs from one 2-second run to the
// next), so one run decides more by when it ran than by what it measured.
const latencyTrials = 3

// mergeLatency pools trials into one measurement (see [Latency]).
func mergeLatency(trials []Latency) Latency {
	var out Latency
	for _, t := range trials {
		out.Sent += t.Sent
		out.Lost += t.Lost
		out.Rate = t.Rate
		out.Samples = append(out.Samples, t.Samples...)
		out.Trials = append(out.Trials, LatencyTrial{P50: t.P50, P99: t.P99, Max: t.Max, Sent: t.Sent, Lost: t.Lost})
	}
	if len(out.Samples) > 0 {
		s := slices.Sorted(slices.Values(out.Samples))
		out.P50, out.P90, out.P99, out.Max = quantile(s, 0.5), quantile(s, 0.9), quantile(s, 0.99), s[len(s)-1]
	}
	return out
}

// runLatency bounces 16-byte UDP datagrams off an echo server in the
// server's namespace, rate per second for d, one at a time, and records
// each round trip. Both ends use blocking system calls on locked threads
// (no Go netpoller wake-ups in the path).
func runLatency(ctx context.Context, client, server *netns.Namespace, cIP, sIP netip.Addr, rate float64, d time.Duration) (Latency, error) {
	var sfd, cfd int = -1, -1
	defer func() {
		if sfd >= 0 {
			unix.Close(sfd)
		}
		if cfd >= 0 {
			unix.Close(cfd)
		}
	}()
	tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
	err := server.Do(func() error {
		var err error
		if sfd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := unix.SetsockoptTimeval(sfd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		return unix.Bind(sfd, &unix.SockaddrInet4{Port: EchoPort, Addr: sIP.As4()})
	})
	if err != nil {
		return Latency{}, fmt.Errorf("latency: echo server: %w", err)
	}
	err = client.Do(func() error {
		var err error
		if cfd, err = unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0); err != nil {
			return err
		}
		if err := unix.SetsockoptTimeval(cfd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
			return err
		}
		if err := unix.Bind(cfd, &unix.SockaddrInet4{Addr: cIP.As4()}); err != nil {
			return err
		}
		return unix.Connect(cfd, &unix.SockaddrInet4{Port: EchoPort, Addr: sIP.As4()})
	})
	if err != nil {
		return Latency{}, fmt.Errorf("latency: client: %w", err)
	}
	var stop atomic.Bool
	echoDone := make(chan struct{})
	go func() {
		defer close(echoDone)
		runtime.LockOSThread()
		defer runtime.UnlockOSThread()
		buf := make([]byte, 64)
		for !stop.Load() {
			n, from, err := unix.Recvfrom(sfd, buf, 0)
			if err != nil {
				continue // timeout: look at stop
			}
			_ = unix.Sendto(sfd, buf[:n], 0, from)
		}
	}()
	defer func() {
		stop.Store(true)
		<-echoDone
	}()

	n := int(rate * d.Seconds())
	lat := Latency{Rate: rate, Samples: make([]float64, 0, n)}
	runtime.LockOSThread()
	defer runtime.UnlockOSThread()
	interval := time.Duration(float64(time.Second) / rate)
	buf := make([]byte, 16)
	rbuf := make([]byte, 64)
	start := time.Now()
	for i := range n {
		if ctx.Err() != nil {
			return Latency{}, fmt.Errorf("latency: %w", ctx.Err())
		}
		if wait := time.Until(start.Add(time.Duration(i) * interval)); wait > 0 {
			time.Sleep(wait)
		}
		binary.BigEndian.PutUint64(buf, uint64(i))
		t0 := time.Now()
		if _, err := unix.Write(cfd, buf); err != nil {
			lat.Lost++
			continue
		}
		lat.Sent++
		for {
			m, err := unix.Read(cfd, rbuf)
			if err != nil {
				lat.Lost++ // timeout
				break
			}
			if m >= 8 && binary.BigEndian.Uint64(rbuf) == uint64(i) {
				lat.Samples = append(lat.Samples, float64(time.Since(t0).Nanoseconds())/1e3)
				break
			}
		}
	}
	if len(lat.Samples) == 0 {
		return lat, errors.New("latency: no answer")
	}
	s := slices.Clone(lat.Samples)
	slices.Sort(s)
	lat.P50, lat.P90, lat.P99, lat.Max = quantile(s, 0.5), quantile(s, 0.9), quantile(s, 0.99), s[len(s)-1]
	return lat, nil
}

// quantile returns the q-quantile of sorted s (nearest rank).
func quantile(s []float64, q float64) float64 {
	if len(s) == 0 {
		return 0
	}
	i := int(q*float64(len(s))+0.5) - 1
	return s[min(max(i, 0), len(s)-1)]
}

// Metrics is a scrape of Prometheus text: sample name with labels (as
// written) → value.
type Metrics map[string]float64

// parseMetrics reads the Prometheus text format, skipping comments.
func parseMetrics(r io.Reader) (Metrics, error) {
	m := Metrics{}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64*1024), 1<<20)
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		v, err := strconv.ParseFloat(line[i+1:], 64)
		if err != nil {
			continue
		}
		m[strings.TrimSpace(line[:i])] = v
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("parse metrics: %w", err)
	}
	return m, nil
}

// Get returns the value of a sample without labels.
func (m Metrics) Get(name string) float64 { return m[name] }

// Sum returns the sum of every sample of a metric, whatever its labels.
func (m Metrics) Sum(name string) float64 {
	var s float64
	for k, v := range m {
		if k == name || strings.HasPrefix(k, name+"{") {
			s += v
		}
	}
	return s
}
