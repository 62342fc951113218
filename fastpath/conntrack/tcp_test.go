package conntrack

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/podgate/podgate/fastpath/packet"
)

const (
	syn    = packet.TCPFlagSYN
	synAck = packet.TCPFlagSYN | packet.TCPFlagACK
	ack    = packet.TCPFlagACK
	psh    = packet.TCPFlagPSH | packet.TCPFlagACK
	fin    = packet.TCPFlagFIN | packet.TCPFlagACK
	rst    = packet.TCPFlagRST
	rstAck = packet.TCPFlagRST | packet.TCPFlagACK
)

const (
	o = Original
	r = Reply
)

// step is one packet of a TCP flow and what the table should make of it.
type step struct {
	Dir    Dir
	Flags  uint8
	Result Result
	State  TCPState
	// Timeout is the entry's remaining lifetime after the packet.
	Timeout time.Duration
}

func TestTCPStateMachine(t *testing.T) {
	def := DefaultTimeouts()
	var (
		tSS = def.TCPSynSent
		tSR = def.TCPSynRecv
		tES = def.TCPEstablished
		tFW = def.TCPFinWait
		tCW = def.TCPCloseWait
		tLA = def.TCPLastAck
		tTW = def.TCPTimeWait
		tCL = def.TCPClose
	)
	// Steps that do not refresh the entry keep the timeout left from
	// the previous step minus the time between packets (1 s).
	tests := []struct {
		name   string
		pickup bool // InsertEstablished instead of Insert
		steps  []step
	}{
		{
			name: "open and close, client first",
			steps: []step{
				{o, syn, Accepted, TCPSynSent, tSS},
				{r, synAck, Accepted, TCPSynRecv, tSR},
				{o, ack, Accepted, TCPEstablished, tES},
				{o, psh, Accepted, TCPEstablished, tES},
				{r, psh, Accepted, TCPEstablished, tES},
				{o, fin, Accepted, TCPFinWait, tFW},
				{r, ack, Accepted, TCPCloseWait, tCW},
				{r, psh, Accepted, TCPCloseWait, tCW},
				{r, fin, Accepted, TCPLastAck, tLA},
				{o, ack, Accepted, TCPTimeWait, tTW},
			},
		},
		{
			name: "server closes first",
			steps: []step{
				{o, syn, Accepted, TCPSynSent, tSS},
				{r, synAck, Accepted, TCPSynRecv, tSR},
				{o, ack, Accepted, TCPEstablished, tES},
				{r, fin, Accepted, TCPFinWait, tFW},
				{r, fin, Accepted, TCPFinWait, tFW}, // retransmitted
				{r, ack, Accepted, TCPFinWait, tFW}, // the FIN sender's ACK
				{o, ack, Accepted, TCPCloseWait, tCW},
				{r, fin, Accepted, TCPCloseWait, tCW}, // retransmitted again
				{o, fin, Accepted, TCPLastAck, tLA},
				{o, fin, Accepted, TCPLastAck, tLA},
				{r, ack, Accepted, TCPTimeWait, tTW},
				{r, ack, Accepted, TCPTimeWait, tTW},
			},
		},
		{
			name: "simultaneous close",
			steps: []step{
				{o, syn, Accepted, TCPSynSent, tSS},
				{r, synAck, Accepted, TCPSynRecv, tSR},
				{o, ack, Accepted, TCPEstablished, tES},
				{o, fin, Accepted, TCPFinWait, tFW},
				{r, fin, Accepted, TCPLastAck, tLA},
				{o, ack, Accepted, TCPTimeWait, tTW},
				{r, ack, Accepted, TCPTimeWait, tTW},
			},
		},
		{
			name: "FIN-ACK answered by FIN-ACK",
			steps: []step{
				{o, syn, Accepted, TCPSynSent, tSS},
				{r, synAck, Accepted, TCPSynRecv, tSR},
				{o, ack, Accepted, TCPEstablished, tES},
				{r, fin, Accepted, TCPFinWait, tFW},
				{o, fin, Accepted, TCPLastAck, tLA},
				{r, ack, Accepted, TCPTimeWait, tTW},
			},
		},
		{
			name: "simultaneous open",
			steps: []step{
				{o, syn, Accepted, TCPSynSent, tSS},
				{r, syn, Accepted, TCPSynSent2, tSS},
				{o, syn, Accepted, TCPSynSent2, tSS}, // late retransmission
				{o, synAck, Accepted, TCPSynRecv, tSR},
				{r, synAck, Ignored, TCPSynRecv, tSR - time.Second},
				{o, ack, Accepted, TCPEstablished, tES},
			},
		},
		{
			name: "connection refused",
			steps: []step{
				{o, syn, Accepted, TCPSynSent, tSS},
				{o, syn, Accepted, TCPSynSent, tSS}, // retransmitted
				{r, rstAck, Accepted, TCPClose, tCL},
			},
		},
		{
			name: "reset when established",
			steps: []step{
				{o, syn, Accepted, TCPSynSent, tSS},
				{r, synAck, Accepted, TCPSynRecv, tSR},
				{o, ack, Accepted, TCPEstablished, tES},
				{o, rst, Accepted, TCPClose, tCL},
				{r, ack, Accepted, TCPClose, tCL},
				{r, rst, Accepted, TCPClose, tCL},
			},
		},
		{
			name: "reset in closing states",
			steps: []step{
				{o, syn, Accepted, TCPSynSent, tSS},
				{r, synAck, Accepted, TCPSynRecv, tSR},
				{o, ack, Accepted, TCPEstablished, tES},
				{o, fin, Accepted, TCPFinWait, tFW},
				{r, rstAck, Accepted, TCPClose, tCL},
			},
		},
		{
			name: "out of state packets",
			steps: []step{
				{o, syn, Accepted, TCPSynSent, tSS},
				{o, ack, Invalid, TCPSynSent, tSS - 1*time.Second},    // no SYN-ACK yet
				{o, synAck, Invalid, TCPSynSent, tSS - 2*time.Second}, // client cannot SYN-ACK
				{o, fin, Invalid, TCPSynSent, tSS - 3*time.Second},    // FIN before handshake
				{r, fin, Invalid, TCPSynSent, tSS - 4*time.Second},
				{r, ack, Ignored, TCPSynSent, tSS - 5*time.Second}, // half-open
				{r, synAck, Accepted, TCPSynRecv, tSR},
				{r, synAck, Ignored, TCPSynRecv, tSR - time.Second}, // retransmitted
				{r, ack, Accepted, TCPSynRecv, tSR},
				{o, ack, Accepted, TCPEstablished, tES},
				{o, syn, Ignored, TCPEstablished, tES - time.Second},
				{r, syn, Invalid, TCPEstablished, tES - 2*time.Second},
				{r, synAck, Ignored, TCPEstablished, tES - 3*time.Second},
			},
		},
		{
			name: "invalid flags",
			steps: []step{
				{o, syn, Accepted, TCPSynSent, tSS},
				{o, syn | packet.TCPFlagFIN, Invalid, TCPSynSent, tSS - 1*time.Second},
				{o, syn | packet.TCPFlagRST, Invalid, TCPSynSent, tSS - 2*time.Second},
				{o, 0, Invalid, TCPSynSent, tSS - 3*time.Second},
				{o, 0xff, Invalid, TCPSynSent, tSS - 4*time.Second},
				{o, packet.TCPFlagFIN, Invalid, TCPSynSent, tSS - 5*time.Second},
				{o, packet.TCPFlagFIN | packet.TCPFlagPSH | packet.TCPFlagURG, Invalid, TCPSynSent, tSS - 6*time.Second}, // Xmas
			},
		},
		{
			name:   "mid-stream pickup",
			pickup: true,
			steps: []step{
				{o, psh, Accepted, TCPEstablished, tES},
				{r, ack, Accepted, TCPEstablished, tES},
				{r, fin, Accepted, TCPFinWait, tFW},
				{o, fin, Accepted, TCPLastAck, tLA},
				{r, ack, Accepted, TCPTimeWait, tTW},
			},
		},
		{
			name: "reopen from TIME_WAIT",
			steps: []step{
				{o, syn, Accepted, TCPSynSent, tSS},
				{r, synAck, Accepted, TCPSynRecv, tSR},
				{o, ack, Accepted, TCPEstablished, tES},
				{o, fin, Accepted, TCPFinWait, tFW},
				{r, fin, Accepted, TCPLastAck, tLA},
				{o, ack, Accepted, TCPTimeWait, tTW},
				{r, syn, Restart, TCPTimeWait, tTW - time.Second}, // the server may not reopen
				{o, syn, Accepted, TCPSynSent, tSS},
				{r, synAck, Accepted, TCPSynRecv, tSR},
				{o, ack, Accepted, TCPEstablished, tES},
				{o, fin, Accepted, TCPFinWait, tFW}, // FIN bits were reset
			},
		},
		{
			name: "reopen from CLOSE",
			steps: []step{
				{o, syn, Accepted, TCPSynSent, tSS},
				{r, rst, Accepted, TCPClose, tCL},
				{o, syn, Accepted, TCPSynSent, tSS},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ct := newTable(t, 4)
			k := tcpKey("10.0.0.1", 40000, "10.0.0.2", 80)
			now := 100 * sec
			var e *Entry
			if tc.pickup {
				e, _ = ct.InsertEstablished(k, now)
			} else {
				e = mustInsert(t, ct, k, now)
			}
			var got []step
			for i, s := range tc.steps {
				now += sec
				pk := k
				if s.Dir == Reply {
					pk = k.Reverse()
				}
				le, dir := ct.Lookup(pk, now)
				if le != e || dir != s.Dir {
					t.Fatalf("step %d: Lookup = %p, %v; want %p, %v", i, le, dir, e, s.Dir)
				}
				res := ct.Update(e, dir, s.Flags, 60, now)
				got = append(got, step{s.Dir, s.Flags, res, e.State(), time.Duration(e.Expires() - now)})
				checkInvariants(t, ct)
			}
			if diff := cmp.Diff(tc.steps, got); diff != "" {
				t.Errorf("steps (-want +got):\n%s", diff)
			}
		})
	}
}

func TestTCPReopenResetsCounters(t *testing.T) {
	ct := newTable(t, 4)
	k := tcpKey("10.0.0.1", 40000, "10.0.0.2", 80)
	e := mustInsert(t, ct, k, 0)
	for _, s := range []struct {
		d Dir
		f uint8
	}{{o, syn}, {r, synAck}, {o, ack}, {o, rst}} {
		ct.Update(e, s.d, s.f, 100, sec)
	}
	if !e.Replied() || e.Packets != [2]uint64{3, 1} {
		t.Fatalf("before reopen: replied %v, packets %v", e.Replied(), e.Packets)
	}
	if res := ct.Update(e, o, syn, 60, 2*sec); res != Accepted || e.State() != TCPSynSent {
		t.Fatalf("reopen: %v, %v", res, e.State())
	}
	if e.Replied() || e.Packets != [2]uint64{1, 0} || e.Bytes != [2]uint64{60, 0} {
		t.Errorf("after reopen: replied %v, packets %v, bytes %v", e.Replied(), e.Packets, e.Bytes)
	}
	if got := e.Key(); got != k {
		t.Errorf("after reopen: key %v, want %v", got, k)
	}
}

func TestValidTCPFlags(t *testing.T) {
	valid := map[uint8]bool{
		syn: true, syn | packet.TCPFlagURG: true, synAck: true,
		rst: true, rstAck: true,
		fin: true, fin | packet.TCPFlagURG: true,
		ack: true, ack | packet.TCPFlagURG: true,
	}
	for f := 0; f < 256; f++ {
		flags := uint8(f)
		want := valid[flags&^(packet.TCPFlagPSH|packet.TCPFlagECE|packet.TCPFlagCWR)]
		if got := ValidTCPFlags(flags); got != want {
			t.Errorf("ValidTCPFlags(%#02x) = %v, want %v", flags, got, want)
		}
	}
}

func TestClassifyNewTCP(t *testing.T) {
	tests := []struct {
		flags uint8
		want  NewTCP
	}{
		{syn, NewTCPOpen},
		{syn | packet.TCPFlagECE | packet.TCPFlagCWR, NewTCPOpen},
		{ack, NewTCPPickup},
		{psh, NewTCPPickup},
		{synAck, NewTCPNoFlow},
		{fin, NewTCPNoFlow},
		{rst, NewTCPNoFlow},
		{rstAck, NewTCPNoFlow},
		{0, NewTCPInvalid},
		{0xff, NewTCPInvalid},
		{syn | packet.TCPFlagFIN, NewTCPInvalid},
		{syn | packet.TCPFlagRST, NewTCPInvalid},
		{packet.TCPFlagFIN, NewTCPInvalid},
		{packet.TCPFlagPSH, NewTCPInvalid},
	}
	for _, tc := range tests {
		if got := ClassifyNewTCP(tc.flags); got != tc.want {
			t.Errorf("ClassifyNewTCP(%#02x) = %v, want %v", tc.flags, got, tc.want)
		}
	}
}

func TestStrings(t *testing.T) {
	got := []string{
		TCPEstablished.String(), TCPSynSent2.String(), TCPState(42).String(),
		Accepted.String(), Restart.String(), Result(9).String(),
		Original.String(), Reply.String(),
		NewTCPPickup.String(), NewTCP(7).String(),
		tcpKey("10.0.0.1", 1, "10.0.0.2", 2).String(),
		MakeKey(mustAddr("fd00::1"), mustAddr("fd00::2"), 58, 7, 7).String(),
	}
	want := []string{
		"ESTABLISHED", "SYN_SENT2", "state-42",
		"accepted", "restart", "result-9",
		"original", "reply",
		"pickup", "new-tcp-7",
		"TCP 10.0.0.1:1 -> 10.0.0.2:2",
		"ICMPv6 [fd00::1]:7 -> [fd00::2]:7",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("(-want +got):\n%s", diff)
	}
}
