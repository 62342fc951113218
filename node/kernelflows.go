package node

import (
	"github.com/podgate/podgate/fastpath"
	"github.com/podgate/podgate/fastpath/offload"
)

// KernelFlows returns o as the engine's flow table ([fastpath.Config]'s
// Offload): the engine's flows, in their original direction, become
// offload flows with canonical keys. Like the engine's worker, its only
// caller, it is not safe for concurrent use.
func KernelFlows(o *offload.Offload, maxFlows int) fastpath.FlowTable {
	return &kernelFlows{
		o:       o,
		flows:   make([]offload.Flow, 0, 256),
		keys:    make([]offload.Key, 0, 256),
		swapped: make([]uint64, (maxFlows+63)/64),
	}
}

type kernelFlows struct {
	o     *offload.Offload
	flows []offload.Flow
	keys  []offload.Key
	// swapped has bit slot set when the flow installed at slot has its
	// original direction as offload.DirBA: its counters are swapped.
	swapped []uint64
}

var actions = [...]offload.Action{
	fastpath.KernelPass:     offload.ActKernel,
	fastpath.KernelPeer:     offload.ActPeer,
	fastpath.KernelRedirect: offload.ActRedirect,
}

func flowDir(p fastpath.KernelPath) offload.FlowDir {
	d := offload.FlowDir{
		InIfindex: uint32(p.InIfindex), OutIfindex: uint32(p.OutIfindex),
		SrcMAC: p.SrcMAC, DstMAC: p.DstMAC, GwMAC: p.GwMAC,
	}
	if int(p.Action) < len(actions) {
		d.Action = actions[p.Action]
	}
	return d
}

func (k *kernelFlows) setSwapped(slot uint32, on bool) {
	i, bit := slot/64, uint64(1)<<(slot%64)
	if int(i) >= len(k.swapped) {
		return
	}
	if on {
		k.swapped[i] |= bit
	} else {
		k.swapped[i] &^= bit
	}
}

func (k *kernelFlows) isSwapped(slot uint32) bool {
	i := slot / 64
	return int(i) < len(k.swapped) && k.swapped[i]&(1<<(slot%64)) != 0
}

// Install implements [fastpath.FlowTable].
func (k *kernelFlows) Install(flows []fastpath.KernelFlow) (int, error) {
	k.flows = k.flows[:0]
	for _, f := range flows {
		key, d := offload.MakeKey(f.Src, f.Dst, f.Proto, f.SrcPort, f.DstPort)
		v := offload.Value{Slot: f.Slot}
		v.Dir[d], v.Dir[1-d] = flowDir(f.Path[0]), flowDir(f.Path[1])
		k.setSwapped(f.Slot, d == offload.DirBA)
		k.flows = append(k.flows, offload.Flow{Key: key, Value: v})
	}
	return k.o.Install(k.flows)
}

// Remove implements [fastpath.FlowTable].
func (k *kernelFlows) Remove(flows []fastpath.KernelFlow) error {
	k.keys = k.keys[:0]
	for _, f := range flows {
		key, _ := offload.MakeKey(f.Src, f.Dst, f.Proto, f.SrcPort, f.DstPort)
		k.keys = append(k.keys, key)
	}
	return k.o.Remove(k.keys)
}

// Take implements [fastpath.FlowTable].
func (k *kernelFlows) Take(slot uint32) fastpath.KernelCounters {
	c := k.o.Take(slot)
	if k.isSwapped(slot) {
		c[0], c[1] = c[1], c[0]
	}
	return fastpath.KernelCounters{
		LastSeen: int64(max(c[0].LastSeenNS, c[1].LastSeenNS)),
		Packets:  [2]uint64{c[0].Packets, c[1].Packets},
		Bytes:    [2]uint64{c[0].Bytes, c[1].Bytes},
	}
}

// Lease implements [fastpath.FlowTable].
func (k *kernelFlows) Lease(until int64) error { return k.o.Lease(until) }

// SetPuntLimit implements [fastpath.PuntLimiter].
func (k *kernelFlows) SetPuntLimit(rate, burst uint64) error {
	return k.o.SetPuntLimit(offload.PuntLimit{Rate: rate, Burst: burst})
}

// PuntLimited implements [fastpath.PuntLimiter].
func (k *kernelFlows) PuntLimited() (uint64, error) {
	s, err := k.o.Stats()
	if err != nil {
		return 0, err
	}
	return s.PuntLimited, nil
}
