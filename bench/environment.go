package bench

import (
	"context"
	"errors"
	"fmt"
	"os"

	"golang.org/x/sys/unix"

	"github.com/podgate/podgate/internal/lab"
	"github.com/podgate/podgate/internal/netns"
)

// The machine around a run: which CPUs the bench, the agent and the kernel's
// forwarding use (pinning, RPS steering), and the generator on the client
// pod.

// setUp pins, steers and opens the generator on the client pod.
func (e *env) setUp(ctx context.Context) error {
	var ok bool
	if e.client, ok = e.lab.Endpoint(ClientPod); !ok {
		return errors.New("bench: no client pod in the lab")
	}
	if e.server, ok = e.lab.Endpoint(ServerPod); !ok {
		return errors.New("bench: no server pod in the lab")
	}
	e.pin = e.cfg.EnforcerCPU != e.cfg.LoadCPU && e.report.Machine.CPUs > max(e.cfg.EnforcerCPU, e.cfg.LoadCPU)
	if e.pin {
		if err := pinProcess(os.Getpid(), cpuSet(e.cfg.LoadCPU)); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		e.report.Pinning = fmt.Sprintf("bench process (generator, connection and latency clients and servers) and iperf3 on CPU %d; "+
			"podgate agent on CPU %d; kernel forwarding steered to CPU %d (RPS on the node ends of the pod veths) "+
			"and the pods' receive processing to CPU %d (RPS on their eth0) for the throughput measurements, RPS off for latency",
			e.cfg.LoadCPU, e.cfg.EnforcerCPU, e.cfg.EnforcerCPU, e.cfg.LoadCPU)
	} else {
		e.report.Pinning = "none (fewer than two CPUs, or --enforcer-cpu equals --load-cpu)"
	}
	// Connection-rate runs open tens of thousands of connections.
	if err := e.client.NS.Sysctl("net.ipv4.ip_local_port_range", "1024 65000"); err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	if err := e.steer(ctx, true); err != nil {
		return err
	}
	srcMAC, err := linkMAC(e.client.NS, "eth0")
	if err != nil {
		return err
	}
	gwMAC, err := linkMAC(e.lab.Node().NS, e.client.HostIf)
	if err != nil {
		return err
	}
	e.gen, err = NewGenerator(GeneratorConfig{
		NS: e.client.NS, Ifname: "eth0", SrcMAC: srcMAC, DstMAC: gwMAC,
		Src: e.client.IPs[0], Dst: e.server.IPs[0],
		SrcPortBase: FloodSrcBase, SrcPorts: FloodSrcN, DstPortBase: FloodPortLo,
	})
	if err != nil {
		return fmt.Errorf("bench: %w", err)
	}
	return nil
}

// tearDown closes the generator and gives the process its CPUs back.
func (e *env) tearDown() error {
	var errs []error
	if e.gen != nil {
		errs = append(errs, e.gen.Close())
	}
	if e.pin {
		var all unix.CPUSet
		for c := range e.report.Machine.CPUs {
			all.Set(c)
		}
		errs = append(errs, pinProcess(os.Getpid(), all))
	}
	return errors.Join(errs...)
}

// steer turns RPS on (throughput) or off (latency) on the node ends of
// the client's and server's veths and on their eth0.
func (e *env) steer(ctx context.Context, on bool) error {
	if !e.pin {
		return nil
	}
	node, pods := uint64(0), uint64(0)
	if on {
		node, pods = cpuMask(e.cfg.EnforcerCPU), cpuMask(e.cfg.LoadCPU)
	}
	for _, ep := range []*lab.Endpoint{e.client, e.server} {
		if err := setRPS(ctx, e.lab.Node().NS, ep.HostIf, node); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
		if err := setRPS(ctx, ep.NS, "eth0", pods); err != nil {
			return fmt.Errorf("bench: %w", err)
		}
	}
	return nil
}

func linkMAC(ns *netns.Namespace, name string) ([]byte, error) {
	h, err := ns.Handle()
	if err != nil {
		return nil, fmt.Errorf("bench: %w", err)
	}
	defer h.Close()
	l, err := h.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("bench: find %s in %s: %w", name, ns.Name(), err)
	}
	return l.Attrs().HardwareAddr, nil
}

func (e *env) loadSet() unix.CPUSet {
	if !e.pin {
		var all unix.CPUSet
		for c := range e.report.Machine.CPUs {
			all.Set(c)
		}
		return all
	}
	return cpuSet(e.cfg.LoadCPU)
}
