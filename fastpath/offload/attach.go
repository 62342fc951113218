package offload

import (
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"strconv"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
)

// AttachPod attaches pod_ingress to the TCX ingress of a pod's host veth,
// first in the interface's TCX chain. It is idempotent. A link pinned by a
// previous run on that interface is updated in place to this run's program
// (the interface is never without one). With Config.PinDir the link is
// pinned, so it survives the process.
func (o *Offload) AttachPod(ifindex int) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return fmt.Errorf("attach pod_ingress: %w", ErrClosed)
	}
	t, err := o.attach(o.pods[ifindex], ifindex, o.objs.PodIngress, ebpf.AttachTCXIngress, pinPodPrefix+strconv.Itoa(ifindex))
	if err != nil {
		return fmt.Errorf("attach pod_ingress to ifindex %d: %w", ifindex, err)
	}
	o.pods[ifindex] = t
	return nil
}

// DetachPod detaches pod_ingress from a pod's host veth and removes its
// pin. Detaching an interface without the program is a no-op.
func (o *Offload) DetachPod(ifindex int) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return fmt.Errorf("detach pod_ingress: %w", ErrClosed)
	}
	t := o.pods[ifindex]
	if t == nil {
		return nil
	}
	delete(o.pods, ifindex)
	if err := detach(t); err != nil {
		return fmt.Errorf("detach pod_ingress from ifindex %d: %w", ifindex, err)
	}
	return nil
}

// AttachKernel attaches kernel_egress to the TCX egress of the kernel leg's
// kernel end (pgk0), then makes it the punt interface: from then on
// pod_ingress redirects the frames it does not forward there, marked (see
// [PuntedFrom]). Before, they go to the kernel unchanged. Attaching to
// another interface moves the program and the punt interface there.
func (o *Offload) AttachKernel(ifindex int) error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return fmt.Errorf("attach kernel_egress: %w", ErrClosed)
	}
	old := o.kernel
	if old != nil && old.ifindex != ifindex {
		if err := detach(old); err != nil {
			return fmt.Errorf("attach kernel_egress to ifindex %d: move from ifindex %d: %w", ifindex, old.ifindex, err)
		}
		o.kernel, old = nil, nil
	}
	t, err := o.attach(old, ifindex, o.objs.KernelEgress, ebpf.AttachTCXEgress, pinKernel)
	if err != nil {
		return fmt.Errorf("attach kernel_egress to ifindex %d: %w", ifindex, err)
	}
	o.kernel = t
	return o.setPuntIfindex(ifindex)
}

// DetachKernel unsets the punt interface (pod_ingress then passes frames it
// does not forward to the kernel unchanged: nothing enforces them), then
// detaches kernel_egress and removes its pin. Without the program attached
// it only unsets the punt interface.
func (o *Offload) DetachKernel() error {
	o.mu.Lock()
	defer o.mu.Unlock()
	if o.closed {
		return fmt.Errorf("detach kernel_egress: %w", ErrClosed)
	}
	if err := o.setPuntIfindex(0); err != nil {
		return fmt.Errorf("detach kernel_egress: %w", err)
	}
	if o.kernel == nil {
		return nil
	}
	t := o.kernel
	o.kernel = nil
	if err := detach(t); err != nil {
		return fmt.Errorf("detach kernel_egress from ifindex %d: %w", t.ifindex, err)
	}
	return nil
}

// Attachments returns the interfaces with pod_ingress (sorted) and the one
// with kernel_egress (0: none), including links a previous run pinned that
// this run has not attached again: after a restart, detach those of pods
// that are gone or no longer managed.
func (o *Offload) Attachments() (pods []int, kernel int) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for i := range o.pods {
		pods = append(pods, i)
	}
	slices.Sort(pods)
	if o.kernel != nil {
		kernel = o.kernel.ifindex
	}
	return pods, kernel
}

// attach makes prog the program on ifindex's hook: it updates t's link if
// t is there (a link of this run or a pinned one of a previous run), or
// creates, and pins, a new link. The caller holds o.mu.
func (o *Offload) attach(t *tcx, ifindex int, prog *ebpf.Program, hook ebpf.AttachType, pinName string) (*tcx, error) {
	if ifindex <= 0 {
		return nil, fmt.Errorf("bad ifindex %d", ifindex)
	}
	if t != nil {
		// A link whose interface went away is detached: replace it.
		if now, err := tcxIfindex(t.link); err != nil || now != ifindex {
			if err := errors.Join(unpin(t), t.link.Close()); err != nil {
				return nil, fmt.Errorf("drop stale link: %w", err)
			}
			t = nil
		}
	}
	if t != nil {
		if !t.current {
			if err := t.link.Update(prog); err != nil {
				return nil, fmt.Errorf("update pinned link %s: %w", t.pin, err)
			}
			t.current = true
		}
		return t, nil
	}
	l, err := link.AttachTCX(link.TCXOptions{
		Interface: ifindex,
		Program:   prog,
		Attach:    hook,
		Anchor:    link.Head(),
	})
	if err != nil {
		return nil, err
	}
	t = &tcx{link: l, ifindex: ifindex, current: true}
	if o.cfg.PinDir != "" {
		path := filepath.Join(o.cfg.PinDir, pinName)
		if err := l.Pin(path); err != nil {
			return nil, errors.Join(fmt.Errorf("pin link %s: %w", path, err), l.Close())
		}
		t.pin = path
	}
	return t, nil
}

// detach detaches t's link even if something else holds it, removes its
// pin and closes it. A link whose interface is gone is detached already.
func detach(t *tcx) error {
	var errs []error
	if now, err := tcxIfindex(t.link); err == nil && now != 0 {
		if err := t.link.Detach(); err != nil {
			errs = append(errs, fmt.Errorf("detach: %w", err))
		}
	}
	errs = append(errs, unpin(t), t.link.Close())
	return errors.Join(errs...)
}

func unpin(t *tcx) error {
	if t.pin == "" {
		return nil
	}
	if err := t.link.Unpin(); err != nil {
		return fmt.Errorf("unpin %s: %w", t.pin, err)
	}
	t.pin = ""
	return nil
}

// PodAttached reports whether this Offload's pod_ingress runs on the TCX
// ingress of ifindex: someone may have detached it, or the veth may have
// been re-created under the same index. One system call.
func (o *Offload) PodAttached(ifindex int) (bool, error) {
	if o.done.Load() {
		return false, fmt.Errorf("query pod_ingress: %w", ErrClosed)
	}
	info, err := o.objs.PodIngress.Info()
	if err != nil {
		return false, fmt.Errorf("query pod_ingress: %w", err)
	}
	id, ok := info.ID()
	if !ok {
		return false, errors.New("query pod_ingress: the kernel gives no program ID")
	}
	res, err := link.QueryPrograms(link.QueryOptions{Target: ifindex, Attach: ebpf.AttachTCXIngress})
	if err != nil {
		return false, fmt.Errorf("query tcx ingress of ifindex %d: %w", ifindex, err)
	}
	for _, p := range res.Programs {
		if p.ID == id {
			return true, nil
		}
	}
	return false, nil
}
