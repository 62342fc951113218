package node

import (
	"fmt"

	"github.com/cilium/ebpf"
	"github.com/vishvananda/netlink/nl"
	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/fastpath/xsk"
)

// replaceStale atomically replaces a podgate program left attached to the
// interface (in the given mode) by a crashed run with prog: one
// RTM_SETLINK with XDP_FLAGS_REPLACE and the stale program as the
// expected one, so the interface is never without a program. Detaching
// the stale program and attaching the new one ([xsk.RemoveStale] then
// [xsk.Program.Attach]) takes two veth XDP reconfigurations, each waiting
// for an RCU grace period (about 16 ms each here), during which the pod's
// frames would reach the kernel unchecked.
//
// It reports false, doing nothing, when no program is attached in that
// mode. A program with another name is an error wrapping
// [xsk.ErrAttached]. After a replacement prog does not know it is
// attached (its Detach is a no-op): remove it with [xsk.RemoveStale].
func replaceStale(ifindex int, mode xsk.AttachMode, prog *xsk.Program) (bool, error) {
	st, err := xsk.QueryXDP(ifindex)
	if err != nil {
		return false, err
	}
	id, flags := st.Native, uint32(unix.XDP_FLAGS_DRV_MODE)
	if mode == xsk.Generic {
		id, flags = st.Generic, unix.XDP_FLAGS_SKB_MODE
	}
	if id == 0 {
		return false, nil
	}
	old, err := ebpf.NewProgramFromID(ebpf.ProgramID(id))
	if err != nil {
		return false, fmt.Errorf("open xdp program %d: %w", id, err)
	}
	defer old.Close()
	info, err := old.Info()
	if err != nil {
		return false, fmt.Errorf("inspect xdp program %d: %w", id, err)
	}
	if info.Name != xsk.ProgramName {
		return false, fmt.Errorf("ifindex %d has foreign %v xdp program %d %q: %w", ifindex, mode, id, info.Name, xsk.ErrAttached)
	}
	nw, err := ebpf.NewProgramFromID(ebpf.ProgramID(prog.ID()))
	if err != nil {
		return false, fmt.Errorf("open xdp program %d: %w", prog.ID(), err)
	}
	defer nw.Close()
	req := nl.NewNetlinkRequest(unix.RTM_SETLINK, unix.NLM_F_ACK)
	msg := nl.NewIfInfomsg(unix.AF_UNSPEC)
	msg.Index = int32(ifindex)
	req.AddData(msg)
	xdp := nl.NewRtAttr(unix.IFLA_XDP|unix.NLA_F_NESTED, nil)
	xdp.AddRtAttr(unix.IFLA_XDP_FD, nl.Uint32Attr(uint32(nw.FD())))
	xdp.AddRtAttr(unix.IFLA_XDP_FLAGS, nl.Uint32Attr(flags|unix.XDP_FLAGS_REPLACE))
	xdp.AddRtAttr(unix.IFLA_XDP_EXPECTED_FD, nl.Uint32Attr(uint32(old.FD())))
	req.AddData(xdp)
	if _, err := req.Execute(unix.NETLINK_ROUTE, 0); err != nil {
		return false, fmt.Errorf("replace stale xdp program %d on ifindex %d: %w", id, ifindex, err)
	}
	return true, nil
}
