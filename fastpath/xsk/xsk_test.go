package xsk_test

import (
	"bytes"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"os"
	"os/exec"
	"strconv"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/asm"
	"github.com/podgate/podgate/fastpath/xsk"
	"github.com/podgate/podgate/internal/netns"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

const helperEnv = "PODGATE_XSK_TEST_HELPER"

// TestMain doubles as a helper process that attaches a Program to the
// interface index in its environment and exits without detaching, the way
// a crashed podgate leaves an interface: with helperEnv=netlink through
// netlink, as podgate versions before BPF links did, with helperEnv=pin
// through a link pinned at the path in its environment, as podgate does.
func TestMain(m *testing.M) {
	if mode := os.Getenv(helperEnv); mode != "" {
		if err := crash(mode); err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		os.Exit(0) // no Detach, no Close
	}
	os.Exit(m.Run())
}

func crash(mode string) error {
	idx, _ := strconv.Atoi(os.Getenv(helperEnv + "_IFINDEX"))
	p, err := xsk.NewProgram(xsk.ProgramConfig{})
	if err != nil {
		return err
	}
	if mode == "pin" {
		_, err := p.AttachPinned(idx, xsk.Native, os.Getenv(helperEnv+"_PIN"))
		return err
	}
	prog, err := ebpf.NewProgramFromID(ebpf.ProgramID(p.ID()))
	if err != nil {
		return err
	}
	l, err := netlink.LinkByIndex(idx)
	if err != nil {
		return err
	}
	return netlink.LinkSetXdpFdWithFlags(l, prog.FD(), unix.XDP_FLAGS_DRV_MODE)
}

// runCrash runs the helper process in ns with the given mode and
// environment.
func runCrash(t *testing.T, ns *netns.Namespace, mode string, ifindex int, env ...string) {
	t.Helper()
	exe, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(exe)
	cmd.Env = append(os.Environ(), helperEnv+"="+mode, fmt.Sprintf("%s_IFINDEX=%d", helperEnv, ifindex))
	cmd.Env = append(cmd.Env, env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := ns.Start(cmd); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		t.Fatalf("helper: %v: %s", err, out.String())
	}
}

func TestProgramAttach(t *testing.T) {
	node := netns.NewForTest(t, "pgx")
	v, err := netns.AddVeth(netns.VethConfig{NS: node, Name: "va", PeerNS: node, PeerName: "vb"})
	if err != nil {
		t.Fatal(err)
	}
	for _, mode := range []xsk.AttachMode{xsk.Native, xsk.Generic} {
		t.Run(mode.String(), func(t *testing.T) {
			inNS(t, node, func() error {
				p, err := xsk.NewProgram(xsk.ProgramConfig{Queues: 2})
				if err != nil {
					return err
				}
				defer p.Close()
				if err := p.Attach(v.Index, mode); err != nil {
					return err
				}
				st, err := xsk.QueryXDP(v.Index)
				if err != nil {
					return err
				}
				want := xsk.XDPState{Native: p.ID()}
				if mode == xsk.Generic {
					want = xsk.XDPState{Generic: p.ID()}
				}
				if p.ID() == 0 || st != want {
					return fmt.Errorf("QueryXDP = %+v, want %+v", st, want)
				}
				// A second program does not replace the first.
				q, err := xsk.NewProgram(xsk.ProgramConfig{})
				if err != nil {
					return err
				}
				defer q.Close()
				if err := q.Attach(v.Index, mode); !errors.Is(err, xsk.ErrAttached) {
					return fmt.Errorf("second Attach error = %v, want ErrAttached", err)
				}
				if err := p.Attach(v.PeerIndex, mode); !errors.Is(err, xsk.ErrAttached) {
					return fmt.Errorf("Attach of an attached Program error = %v, want ErrAttached", err)
				}
				if err := p.Register(2, 0); err == nil {
					return errors.New("Register beyond Queues succeeded")
				}
				if err := p.Unregister(1); err != nil {
					return fmt.Errorf("Unregister of an empty queue: %w", err)
				}
				if err := p.Close(); err != nil {
					return err
				}
				if st, err := xsk.QueryXDP(v.Index); err != nil || st != (xsk.XDPState{}) {
					return fmt.Errorf("after Close: QueryXDP = %+v, %v", st, err)
				}
				if err := p.Attach(v.Index, mode); !errors.Is(err, xsk.ErrClosed) {
					return fmt.Errorf("Attach after Close error = %v", err)
				}
				if err := p.Attach(v.Index, xsk.AttachMode(7)); err == nil {
					return errors.New("Attach with a bad mode succeeded")
				}
				return nil
			})
		})
	}
}

func TestRemoveStale(t *testing.T) {
	node := netns.NewForTest(t, "pgx")
	v, err := netns.AddVeth(netns.VethConfig{NS: node, Name: "va", PeerNS: node, PeerName: "vb"})
	if err != nil {
		t.Fatal(err)
	}
	// A child process in the node namespace attaches the way older
	// versions did, and exits.
	runCrash(t, node, "netlink", v.Index)
	inNS(t, node, func() error {
		st, err := xsk.QueryXDP(v.Index)
		if err != nil {
			return err
		}
		if st.Native == 0 {
			return errors.New("helper left no program")
		}
		// The leftover keeps a new Program from attaching.
		p, err := xsk.NewProgram(xsk.ProgramConfig{})
		if err != nil {
			return err
		}
		defer p.Close()
		if err := p.Attach(v.Index, xsk.Native); !errors.Is(err, xsk.ErrAttached) {
			return fmt.Errorf("Attach over a leftover: %v, want ErrAttached", err)
		}
		n, err := xsk.RemoveStale(v.Index)
		if err != nil || n != 1 {
			return fmt.Errorf("RemoveStale = %d, %v; want 1", n, err)
		}
		if st, err := xsk.QueryXDP(v.Index); err != nil || st != (xsk.XDPState{}) {
			return fmt.Errorf("after RemoveStale: %+v, %v", st, err)
		}
		if n, err := xsk.RemoveStale(v.Index); n != 0 || err != nil {
			return fmt.Errorf("RemoveStale on a clean interface = %d, %v", n, err)
		}

		// Somebody else's program is left alone.
		foreign, err := ebpf.NewProgram(&ebpf.ProgramSpec{
			Name: "foreign", Type: ebpf.XDP, License: "MIT",
			Instructions: asm.Instructions{asm.Mov.Imm(asm.R0, 2), asm.Return()},
		})
		if err != nil {
			return err
		}
		defer foreign.Close()
		link, err := netlink.LinkByIndex(v.Index)
		if err != nil {
			return err
		}
		if err := netlink.LinkSetXdpFdWithFlags(link, foreign.FD(), unix.XDP_FLAGS_SKB_MODE); err != nil {
			return err
		}
		n, err = xsk.RemoveStale(v.Index)
		if n != 0 || !errors.Is(err, xsk.ErrAttached) {
			return fmt.Errorf("RemoveStale with a foreign program = %d, %v", n, err)
		}
		return netlink.LinkSetXdpFdWithFlags(link, -1, unix.XDP_FLAGS_SKB_MODE)
	})
}

// TestAttachPinned: a pinned link outlives its process, and the next
// Program takes it over in place, so the interface is never without a
// podgate program.
func TestAttachPinned(t *testing.T) {
	node := netns.NewForTest(t, "pgx")
	v, err := netns.AddVeth(netns.VethConfig{NS: node, Name: "va", PeerNS: node, PeerName: "vb"})
	if err != nil {
		t.Fatal(err)
	}
	bpffs := t.TempDir()
	if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
		t.Skipf("mount a bpffs: %v", err)
	}
	t.Cleanup(func() { _ = unix.Unmount(bpffs, unix.MNT_DETACH) })
	pin := bpffs + "/xdp"
	runCrash(t, node, "pin", v.Index, helperEnv+"_PIN="+pin)
	inNS(t, node, func() error {
		st, err := xsk.QueryXDP(v.Index)
		if err != nil {
			return err
		}
		if st.Native == 0 {
			return errors.New("the crashed process left no program")
		}
		// Not replaceable by netlink, nor by another link.
		if n, err := xsk.RemoveStale(v.Index); n != 0 || err == nil {
			return fmt.Errorf("RemoveStale on a pinned link = %d, %v; want 0 and an error", n, err)
		}
		q, err := xsk.NewProgram(xsk.ProgramConfig{})
		if err != nil {
			return err
		}
		defer q.Close()
		if err := q.Attach(v.Index, xsk.Native); !errors.Is(err, xsk.ErrAttached) {
			return fmt.Errorf("Attach over a pinned link: %v, want ErrAttached", err)
		}

		p, err := xsk.NewProgram(xsk.ProgramConfig{})
		if err != nil {
			return err
		}
		defer p.Close()
		updated, err := p.AttachPinned(v.Index, xsk.Native, pin)
		if err != nil || !updated {
			return fmt.Errorf("AttachPinned over the crashed process's link = %v, %v; want true", updated, err)
		}
		if st, err := xsk.QueryXDP(v.Index); err != nil || st != (xsk.XDPState{Native: p.ID()}) {
			return fmt.Errorf("after the update: QueryXDP = %+v, %v; want native %d", st, err, p.ID())
		}
		if ok, err := p.Attached(); !ok || err != nil {
			return fmt.Errorf("Attached = %v, %v", ok, err)
		}
		if err := p.Close(); err != nil {
			return err
		}
		if st, err := xsk.QueryXDP(v.Index); err != nil || st != (xsk.XDPState{}) {
			return fmt.Errorf("after Close: QueryXDP = %+v, %v", st, err)
		}
		if _, err := os.Stat(pin); !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("pin after Close: %v", err)
		}
		// Pinned afresh on a clean interface; a link whose interface is
		// gone is dropped.
		r, err := xsk.NewProgram(xsk.ProgramConfig{})
		if err != nil {
			return err
		}
		defer r.Close()
		if updated, err := r.AttachPinned(v.Index, xsk.Native, pin); updated || err != nil {
			return fmt.Errorf("AttachPinned on a clean interface = %v, %v", updated, err)
		}
		return nil
	})
	other, err := netns.AddVeth(netns.VethConfig{NS: node, Name: "vc", PeerNS: node, PeerName: "vd"})
	if err != nil {
		t.Fatal(err)
	}
	runCrash(t, node, "pin", other.Index, helperEnv+"_PIN="+bpffs+"/gone")
	h := netns.HandleForTest(t, node)
	l, err := h.LinkByIndex(other.Index)
	if err != nil {
		t.Fatal(err)
	}
	if err := h.LinkDel(l); err != nil {
		t.Fatal(err)
	}
	inNS(t, node, func() error {
		p, err := xsk.NewProgram(xsk.ProgramConfig{})
		if err != nil {
			return err
		}
		defer p.Close()
		if updated, err := p.AttachPinned(v.PeerIndex, xsk.Native, bpffs+"/gone"); updated || err != nil {
			return fmt.Errorf("AttachPinned over a link whose interface is gone = %v, %v", updated, err)
		}
		if ok, err := p.Attached(); !ok || err != nil {
			return fmt.Errorf("Attached = %v, %v", ok, err)
		}
		return nil
	})
}

func TestOpenChecksFrameSize(t *testing.T) {
	node := netns.NewForTest(t, "pgx")
	v, err := netns.AddVeth(netns.VethConfig{NS: node, Name: "va", PeerNS: node, PeerName: "vb", MTU: 3000})
	if err != nil {
		t.Fatal(err)
	}
	inNS(t, node, func() error {
		if _, err := xsk.Open(xsk.Config{Ifindex: v.Index}); !errors.Is(err, xsk.ErrFrameSize) {
			return fmt.Errorf("Open with 2048-byte frames on MTU 3000: %v, want ErrFrameSize", err)
		}
		s, err := xsk.Open(xsk.Config{Ifindex: v.Index, FrameSize: 4096})
		if err != nil {
			return err
		}
		return s.Close()
	})
	// Native XDP on veth caps the peer MTU near a page.
	big, err := netns.AddVeth(netns.VethConfig{NS: node, Name: "vc", PeerNS: node, PeerName: "vd", MTU: 3600})
	if err != nil {
		t.Fatal(err)
	}
	inNS(t, node, func() error {
		p, err := xsk.NewProgram(xsk.ProgramConfig{})
		if err != nil {
			return err
		}
		defer p.Close()
		if err := p.Attach(big.Index, xsk.Native); !errors.Is(err, unix.ERANGE) {
			return fmt.Errorf("native attach with peer MTU 3600: %v, want ERANGE", err)
		}
		return nil
	})
}

// TestUDP sends datagrams of many sizes both ways through the forwarder
// (each answered by an echo) in both attach modes.
func TestUDP(t *testing.T) {
	for _, mode := range []xsk.AttachMode{xsk.Native, xsk.Generic} {
		t.Run(mode.String(), func(t *testing.T) {
			l := newLab(t, 1500)
			fw, pa, pb := startLabForwarder(t, l, mode, xsk.Config{})
			var srv, cli *net.UDPConn
			inNS(t, l.podB, func() (err error) {
				srv, err = net.ListenUDP("udp4", &net.UDPAddr{IP: ipB.AsSlice(), Port: 9000})
				return err
			})
			t.Cleanup(func() { srv.Close() })
			inNS(t, l.podA, func() (err error) {
				cli, err = net.DialUDP("udp4", nil, &net.UDPAddr{IP: ipB.AsSlice(), Port: 9000})
				return err
			})
			t.Cleanup(func() { cli.Close() })
			go func() { // echo server in pod B
				buf := make([]byte, 2000)
				for {
					n, from, err := srv.ReadFromUDP(buf)
					if err != nil {
						return
					}
					if _, err := srv.WriteToUDP(buf[:n], from); err != nil {
						return
					}
				}
			}()
			rng := rand.New(rand.NewPCG(1, 2))
			buf := make([]byte, 2000)
			sizes := []int{1, 18, 100, 512, 1000, 1472}
			for i := range 300 {
				msg := make([]byte, sizes[i%len(sizes)])
				for j := range msg {
					msg[j] = byte(rng.Uint32())
				}
				if _, err := cli.Write(msg); err != nil {
					t.Fatal(err)
				}
				if err := cli.SetReadDeadline(time.Now().Add(3 * time.Second)); err != nil {
					t.Fatal(err)
				}
				n, err := cli.Read(buf)
				if err != nil {
					t.Fatalf("datagram %d (%d bytes): no echo: %v", i, len(msg), err)
				}
				if !bytes.Equal(buf[:n], msg) {
					t.Fatalf("datagram %d: echo differs", i)
				}
			}
			checkPorts(t, fw, pa, pb)
		})
	}
}

// checkPorts fails the test if a port lost frames.
func checkPorts(t *testing.T, fw *forwarder, ports ...*port) {
	t.Helper()
	fw.close()
	if fw.err != nil {
		t.Errorf("forwarder: %v", fw.err)
	}
	if d := fw.dropped.Load(); d != 0 {
		t.Errorf("forwarder dropped %d frames", d)
	}
	for _, p := range ports {
		st, err := p.sock.Stats()
		if err != nil {
			t.Fatal(err)
		}
		// RxDropped counts both frames that found no free UMEM frame
		// (also counted in RxFillRingEmptyDescs: the forwarder fell
		// behind, which happens on a loaded machine and TCP recovers
		// from) and frames that did not fit one, which must not happen.
		var oversize uint64
		if st.RxDropped > st.RxFillRingEmptyDescs {
			oversize = st.RxDropped - st.RxFillRingEmptyDescs
		}
		if oversize != 0 || st.BadFrames != 0 || st.RxInvalidDescs != 0 || st.TxInvalidDescs != 0 {
			t.Errorf("port %s lost frames: %+v", p.name, st)
		}
		if st.RxFillRingEmptyDescs != 0 {
			t.Logf("port %s: %d frames dropped while the forwarder was behind (fill ring empty)", p.name, st.RxFillRingEmptyDescs)
		}
		t.Logf("port %s: %+v", p.name, st)
	}
}

// tcpTransfer sends size pseudo-random bytes from pod A to pod B over TCP
// and reports whether pod B received them intact before the timeout.
func tcpTransfer(t *testing.T, l *lab, size int64, timeout time.Duration) (ok bool, got int64, elapsed time.Duration) {
	t.Helper()
	var ln net.Listener
	inNS(t, l.podB, func() (err error) {
		ln, err = net.Listen("tcp4", net.JoinHostPort(ipB.String(), "9001"))
		return err
	})
	t.Cleanup(func() { ln.Close() })
	type result struct {
		n   int64
		sum []byte
	}
	res := make(chan result, 1)
	deadline := time.Now().Add(timeout)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			res <- result{}
			return
		}
		defer c.Close()
		_ = c.SetReadDeadline(deadline)
		h := sha256.New()
		n, _ := io.Copy(h, c)
		res <- result{n, h.Sum(nil)}
	}()
	var c net.Conn
	inNS(t, l.podA, func() (err error) {
		c, err = (&net.Dialer{Deadline: deadline}).Dial("tcp4", net.JoinHostPort(ipB.String(), "9001"))
		return err
	})
	src := rand.NewChaCha8([32]byte{1})
	h := sha256.New()
	start := time.Now()
	_ = c.SetWriteDeadline(deadline)
	_, werr := io.CopyN(io.MultiWriter(c, h), src, size)
	c.Close()
	r := <-res
	elapsed = time.Since(start)
	if werr != nil {
		t.Logf("sender: %v", werr)
	}
	return r.n == size && bytes.Equal(r.sum, h.Sum(nil)), r.n, elapsed
}

// TestTCPBulk moves 100 MB over TCP from pod A to pod B through the
// forwarder in native mode, at MTU 1500 with the pods' default offloads
// (TSO/GSO/checksum offload on), and checks the SHA-256 of what arrived.
func TestTCPBulk(t *testing.T) {
	l := newLab(t, 1500)
	fw, pa, pb := startLabForwarder(t, l, xsk.Native, xsk.Config{})
	const size = 100 << 20
	ok, got, elapsed := tcpTransfer(t, l, size, 60*time.Second)
	if !ok {
		t.Fatalf("received %d of %d bytes or a different hash", got, size)
	}
	t.Logf("100 MiB intact in %v (%.0f Mbit/s); longest frame %d bytes; %d frames needed their L4 checksum completed",
		elapsed, float64(size*8)/elapsed.Seconds()/1e6, fw.maxLen.Load(), fw.csumFix.Load())
	if m := fw.maxLen.Load(); m > 1514 {
		t.Errorf("longest frame %d bytes, want <= 1514 (MTU 1500)", m)
	}
	checkPorts(t, fw, pa, pb)
}

// TestGenericModeTSO documents why the fastpath attaches in native mode:
// in generic mode the pod's TSO super-frames reach the XDP program, do not
// fit a UMEM frame and are dropped by the kernel (counted in RxDropped), so
// bulk TCP stalls; limiting the pod's GSO size (a setting inside the pod's
// namespace) avoids it.
func TestGenericModeTSO(t *testing.T) {
	t.Run("pod-defaults", func(t *testing.T) {
		l := newLab(t, 1500)
		_, pa, _ := startLabForwarder(t, l, xsk.Generic, xsk.Config{})
		ok, got, _ := tcpTransfer(t, l, 8<<20, 3*time.Second)
		st, err := pa.sock.Stats()
		if err != nil {
			t.Fatal(err)
		}
		t.Logf("generic mode, pod TSO on: transfer ok=%v (%d bytes), port A RxDropped=%d", ok, got, st.RxDropped)
		if ok || st.RxDropped == 0 {
			t.Errorf("expected oversized TSO frames to be dropped and TCP to stall")
		}
	})
	t.Run("pod-gso_max_size", func(t *testing.T) {
		l := newLab(t, 1500)
		for _, ns := range []*netns.Namespace{l.podA, l.podB} {
			h := netns.HandleForTest(t, ns)
			eth0, err := h.LinkByName("eth0")
			if err != nil {
				t.Fatal(err)
			}
			if err := h.LinkSetGSOMaxSize(eth0, 1500); err != nil {
				t.Fatal(err)
			}
		}
		fw, pa, pb := startLabForwarder(t, l, xsk.Generic, xsk.Config{})
		if ok, got, _ := tcpTransfer(t, l, 8<<20, 20*time.Second); !ok {
			t.Fatalf("received %d bytes or a different hash", got)
		}
		checkPorts(t, fw, pa, pb)
	})
}
