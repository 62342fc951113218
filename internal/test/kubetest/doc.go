// Package kubetest runs a real kube-apiserver and etcd on loopback for
// integration tests: no fakes, so admission, validation, RBAC and watch
// semantics are those of a real cluster.
//
// The binaries come from hack/kube-binaries.sh, which builds kube-apiserver
// (KubeVersion) and etcd (EtcdVersion) from the Go module proxy and caches
// them under ${PODGATE_CACHE:-$HOME/.cache/podgate}. The environment
// variables PODGATE_KUBE_APISERVER and PODGATE_ETCD point at other builds.
// When the binaries are missing, Start skips the test; with
// PODGATE_REQUIRE_KUBE=1 (which `make test` sets after building them) it
// fails it instead.
//
// An Env is one control plane: etcd with a temporary data directory and a
// kube-apiserver that serves only HTTPS on 127.0.0.1, authenticates clients
// by certificates signed by an in-process CA (and service accounts by their
// tokens), and authorizes with RBAC. Env.Config is the admin identity
// (group system:masters); Env.ConfigFor and Env.ServiceAccountConfig give
// other identities so that RBAC rules can be tested for real (the admin
// may also impersonate through rest.Config.Impersonate).
//
// There is no controller-manager, scheduler or kubelet:
//
//   - The ServiceAccount admission plugin stays enabled, as in a real
//     cluster, so pods get spec.serviceAccountName and a projected token
//     volume. In place of the controller-manager's service account
//     controller, the Env runs a small in-process loop that creates the
//     "default" ServiceAccount in every namespace; Env.CreateNamespace also
//     waits for it, so a pod can be created right after.
//   - Pods are never scheduled or run: tests set spec.nodeName themselves
//     and CreatePod/SetPodStatus write status.phase, status.podIP(s) and
//     status.hostIP(s) through the status subresource, as a kubelet would.
//   - Nothing garbage-collects or finalizes: a deleted namespace stays
//     Terminating, and owner references are not followed.
//
// Env.StopAPIServer (graceful), Env.KillAPIServer (a crash),
// Env.StartAPIServer and Env.RestartAPIServer stop and start the API server
// alone, on the same port and with the same etcd data, so tests can check
// that watches resume.
//
// Start registers cleanups that kill both processes (by process group) and,
// when the test failed, log the tail of their logs, which are kept in files
// in the test's temporary directory. As a last resort the processes are
// started with a parent-death signal, so they die with the test binary even
// when it is killed by a test timeout (its temporary directory then stays
// behind, as for any test that times out).
package kubetest
