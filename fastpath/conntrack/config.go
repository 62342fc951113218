package conntrack

import (
	"errors"
	"fmt"
	"time"
)

// ErrInvalidConfig is wrapped by the errors of [Config.Validate] and [New].
var ErrInvalidConfig = errors.New("invalid conntrack config")

// Limits of [Config].
const (
	// MaxCapacity is the largest number of flows a [Table] can hold.
	MaxCapacity = 1 << 28
	// MaxFragCapacity is the largest number of fragment entries.
	MaxFragCapacity = 1 << 20
	// MaxOwners bounds [Config.MaxOwners].
	MaxOwners = 1 << 16
)

// Defaults of [Config].
const (
	DefaultCapacity     = 1 << 18
	DefaultFragCapacity = 4096
	DefaultFragTimeout  = 30 * time.Second
	// DefaultMaxOwners is the default of [Config.MaxOwners].
	DefaultMaxOwners = 4096
	// DefaultLRUGranularity is the default of [Config.LRUGranularity].
	DefaultLRUGranularity = time.Second
)

// Timeouts are the idle times after which a flow expires, per state. Each
// packet that the state machine accepts restarts the timer of the flow's
// (new) state. The defaults ([DefaultTimeouts]) are the kernel's
// nf_conntrack defaults.
type Timeouts struct {
	TCPSynSent     time.Duration // also SYN_SENT2
	TCPSynRecv     time.Duration
	TCPEstablished time.Duration
	TCPFinWait     time.Duration
	TCPCloseWait   time.Duration
	TCPLastAck     time.Duration
	TCPTimeWait    time.Duration
	TCPClose       time.Duration
	// UDP applies until a packet was seen in the reply direction,
	// UDPStream after.
	UDP       time.Duration
	UDPStream time.Duration
	// ICMP applies to ICMP and ICMPv6 queries (echo).
	ICMP time.Duration
	// Generic applies to every other protocol (SCTP included).
	Generic time.Duration
	// Tombstone applies to flows that policy cut ([Table.Tombstone]): how
	// long after its last packet a cut connection is remembered, so that
	// none of its packets can start a flow. It should outlast TCP's
	// longest retransmission interval (120 s on Linux).
	Tombstone time.Duration
}

// DefaultTimeouts returns the kernel's defaults: SYN_SENT 120 s, SYN_RECV
// 60 s, ESTABLISHED 5 days, FIN_WAIT 120 s, CLOSE_WAIT 60 s, LAST_ACK 30 s,
// TIME_WAIT 120 s, CLOSE 10 s; UDP 30 s unreplied, 120 s replied; ICMP 30 s;
// other protocols 600 s. Tombstones (which the kernel does not have) last
// 150 s, past TCP's longest retransmission interval.
func DefaultTimeouts() Timeouts {
	return Timeouts{
		TCPSynSent:     120 * time.Second,
		TCPSynRecv:     60 * time.Second,
		TCPEstablished: 5 * 24 * time.Hour,
		TCPFinWait:     120 * time.Second,
		TCPCloseWait:   60 * time.Second,
		TCPLastAck:     30 * time.Second,
		TCPTimeWait:    120 * time.Second,
		TCPClose:       10 * time.Second,
		UDP:            30 * time.Second,
		UDPStream:      120 * time.Second,
		ICMP:           30 * time.Second,
		Generic:        600 * time.Second,
		Tombstone:      150 * time.Second,
	}
}

// fields returns pointers to the timeouts with their names, in class order.
func (t *Timeouts) fields() [numClasses - 1]struct {
	name string
	d    *time.Duration
} {
	return [numClasses - 1]struct {
		name string
		d    *time.Duration
	}{
		{"TCPSynSent", &t.TCPSynSent},
		{"TCPSynRecv", &t.TCPSynRecv},
		{"TCPEstablished", &t.TCPEstablished},
		{"TCPFinWait", &t.TCPFinWait},
		{"TCPCloseWait", &t.TCPCloseWait},
		{"TCPLastAck", &t.TCPLastAck},
		{"TCPTimeWait", &t.TCPTimeWait},
		{"TCPClose", &t.TCPClose},
		{"UDP", &t.UDP},
		{"UDPStream", &t.UDPStream},
		{"ICMP", &t.ICMP},
		{"Generic", &t.Generic},
		{"Tombstone", &t.Tombstone},
	}
}

// Config describes a [Table].
type Config struct {
	// Capacity is the maximum number of flows. When the table is full, an
	// insert reuses an expired entry or evicts the least recently used one.
	// Memory is about 150 bytes per flow (see [Table.MemoryBytes]).
	Capacity int
	// FragCapacity is the maximum number of fragmented packets whose first
	// fragment's verdict is remembered; the oldest is replaced when full.
	FragCapacity int
	// FragTimeout is how long a first fragment's verdict is kept.
	FragTimeout time.Duration
	// Timeouts per state; zero fields take their [DefaultTimeouts] value.
	Timeouts Timeouts
	// LRUGranularity bounds how often a packet moves its flow to the head
	// of its LRU list: at most once per LRUGranularity, because moving
	// costs cache misses on the list neighbours. Eviction then picks a flow
	// whose last packet is at most LRUGranularity more recent than that of
	// the least recently seen flow, and Expire may find an expired flow up
	// to LRUGranularity late (lookups never return expired flows). Zero
	// means 1 s; 1 ns gives exact LRU order.
	LRUGranularity time.Duration
	// MaxOwners is one more than the largest [Owner] that flows may have
	// (default 4096, at most 65536): owners at or beyond it count as none.
	MaxOwners int
	// Seed keys the hash function. Zero draws a random seed, which is what
	// production wants (flow keys are chosen by pods); tests fix it.
	Seed uint64
}

// SetDefaults fills zero fields with their defaults.
func (c *Config) SetDefaults() {
	if c.Capacity == 0 {
		c.Capacity = DefaultCapacity
	}
	if c.FragCapacity == 0 {
		c.FragCapacity = DefaultFragCapacity
	}
	if c.FragTimeout == 0 {
		c.FragTimeout = DefaultFragTimeout
	}
	if c.LRUGranularity == 0 {
		c.LRUGranularity = DefaultLRUGranularity
	}
	if c.MaxOwners == 0 {
		c.MaxOwners = DefaultMaxOwners
	}
	def := DefaultTimeouts()
	df := def.fields()
	for i, f := range c.Timeouts.fields() {
		if *f.d == 0 {
			*f.d = *df[i].d
		}
	}
}

// Validate checks a config after [Config.SetDefaults] and returns all
// problems joined, each wrapping [ErrInvalidConfig].
func (c *Config) Validate() error {
	var errs []error
	if c.Capacity < 1 || c.Capacity > MaxCapacity {
		errs = append(errs, fmt.Errorf("capacity %d not in [1, %d]: %w", c.Capacity, MaxCapacity, ErrInvalidConfig))
	}
	if c.FragCapacity < 1 || c.FragCapacity > MaxFragCapacity {
		errs = append(errs, fmt.Errorf("fragment capacity %d not in [1, %d]: %w", c.FragCapacity, MaxFragCapacity, ErrInvalidConfig))
	}
	if c.FragTimeout <= 0 {
		errs = append(errs, fmt.Errorf("fragment timeout %v not positive: %w", c.FragTimeout, ErrInvalidConfig))
	}
	if c.MaxOwners < 1 || c.MaxOwners > MaxOwners {
		errs = append(errs, fmt.Errorf("max owners %d not in [1, %d]: %w", c.MaxOwners, MaxOwners, ErrInvalidConfig))
	}
	if c.LRUGranularity <= 0 {
		errs = append(errs, fmt.Errorf("LRU granularity %v not positive: %w", c.LRUGranularity, ErrInvalidConfig))
	}
	for _, f := range c.Timeouts.fields() {
		if *f.d <= 0 {
			errs = append(errs, fmt.Errorf("timeout %s %v not positive: %w", f.name, *f.d, ErrInvalidConfig))
		}
	}
	return errors.Join(errs...)
}
