package kubetest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
)

const (
	// ServiceClusterIPRange is the --service-cluster-ip-range of the API
	// server.
	ServiceClusterIPRange = "10.0.0.0/24"
	// ServiceAccountIssuer is the --service-account-issuer of the API
	// server.
	ServiceAccountIssuer = "https://kubernetes.default.svc.cluster.local"
	// AdminUser is the user name of Env.Config; it is in the group
	// system:masters, which bypasses authorization.
	AdminUser = "kubetest-admin"

	defaultReadyTimeout = 2 * time.Minute
	// apiServerStopGrace bounds a graceful API server shutdown.
	apiServerStopGrace = 15 * time.Second
	etcdStopGrace      = 5 * time.Second
	// startAttempts is how often Launch picks new ports when one was taken
	// by another process between choosing and binding it.
	startAttempts = 3
)

// Options configure Launch. The zero value is usable with Start.
type Options struct {
	// Binaries are the executables to run; zero means FindBinaries.
	Binaries Binaries
	// Dir holds the certificates, the etcd data and the logs. Launch
	// requires it; Start uses the test's temporary directory when empty.
	// The caller removes it.
	Dir string
	// APIServerFlags are extra kube-apiserver flags ("--name=value"),
	// passed after the defaults (for a repeated flag the last one wins).
	APIServerFlags []string
	// ReadyTimeout bounds waiting for etcd and then for the API server to
	// be ready, on each start; zero means two minutes.
	ReadyTimeout time.Duration
}

// Env is a running etcd and kube-apiserver pair. Its methods are safe for
// concurrent use.
type Env struct {
	bins      Binaries
	dir       string
	logDir    string
	timeout   time.Duration
	extra     []string
	spawner   *spawner
	ca        *authority
	adminCert []byte
	adminKey  []byte
	admin     *rest.Config
	client    *kubernetes.Clientset
	etcdURL   string
	apiPort   int
	saCancel  context.CancelFunc
	saDone    chan struct{}

	mu        sync.Mutex
	etcd      *process
	apiserver *process
	closed    bool
}

// Launch starts etcd and kube-apiserver and waits until the API server is
// ready. On error nothing is left running. Close stops the Env.
func Launch(ctx context.Context, opts Options) (*Env, error) {
	if opts.Dir == "" {
		return nil, errors.New("kubetest: Options.Dir is required")
	}
	if opts.Binaries == (Binaries{}) {
		b, err := FindBinaries()
		if err != nil {
			return nil, err
		}
		opts.Binaries = b
	}
	e := &Env{
		bins:    opts.Binaries,
		dir:     opts.Dir,
		logDir:  filepath.Join(opts.Dir, "logs"),
		timeout: opts.ReadyTimeout,
		extra:   append([]string(nil), opts.APIServerFlags...),
		spawner: newSpawner(),
	}
	if e.timeout <= 0 {
		e.timeout = defaultReadyTimeout
	}
	if err := e.launch(ctx); err != nil {
		return nil, errors.Join(err, e.Close())
	}
	return e, nil
}

func (e *Env) launch(ctx context.Context) error {
	for _, d := range []string{e.pkiDir(), e.logDir, e.etcdDataDir()} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return fmt.Errorf("creating %s: %w", d, err)
		}
	}
	if err := e.writePKI(); err != nil {
		return err
	}
	if err := e.startEtcd(ctx); err != nil {
		return err
	}
	if err := e.startAPIServerFirst(ctx); err != nil {
		return err
	}
	client, err := kubernetes.NewForConfig(e.Config())
	if err != nil {
		return fmt.Errorf("creating admin client: %w", err)
	}
	e.client = client
	saCtx, cancel := context.WithCancel(context.Background())
	e.saCancel = cancel
	e.saDone = make(chan struct{})
	go func() {
		defer close(e.saDone)
		runDefaultServiceAccounts(saCtx, client)
	}()
	return nil
}

func (e *Env) pkiDir() string      { return filepath.Join(e.dir, "pki") }
func (e *Env) etcdDataDir() string { return filepath.Join(e.dir, "etcd-data") }
func (e *Env) pki(name string) string {
	return filepath.Join(e.pkiDir(), name)
}

// writePKI creates the CA, the API server's serving certificate, the
// service account signing key and the admin client certificate.
func (e *Env) writePKI() error {
	ca, err := newAuthority(time.Now())
	if err != nil {
		return err
	}
	e.ca = ca
	kubernetesServiceIP, err := firstServiceIP(ServiceClusterIPRange)
	if err != nil {
		return err
	}
	servingCert, servingKey, err := ca.issueServing(
		[]net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback, kubernetesServiceIP},
		[]string{"localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
			"kubernetes.default.svc.cluster.local"},
	)
	if err != nil {
		return err
	}
	saKey, err := newKey()
	if err != nil {
		return err
	}
	saKeyPEM, err := encodeKey(saKey)
	if err != nil {
		return err
	}
	saPubPEM, err := encodePublicKey(saKey.Public())
	if err != nil {
		return err
	}
	e.adminCert, e.adminKey, err = ca.issueClient(AdminUser, []string{"system:masters"})
	if err != nil {
		return err
	}
	files := map[string][]byte{
		"ca.crt":        ca.certPEM,
		"apiserver.crt": servingCert,
		"apiserver.key": servingKey,
		"sa.key":        saKeyPEM,
		"sa.pub":        saPubPEM,
		"admin.crt":     e.adminCert,
		"admin.key":     e.adminKey,
	}
	for name, data := range files {
		if err := writeFile(e.pki(name), data); err != nil {
			return err
		}
	}
	return nil
}

// firstServiceIP returns the first address of cidr, where kube-apiserver
// puts the kubernetes Service.
func firstServiceIP(cidr string) (net.IP, error) {
	_, n, err := net.ParseCIDR(cidr)
	if err != nil {
		return nil, fmt.Errorf("parsing service range %q: %w", cidr, err)
	}
	ip := n.IP.To4()
	if ip == nil {
		return nil, fmt.Errorf("service range %q is not IPv4", cidr)
	}
	first := net.IPv4(ip[0], ip[1], ip[2], ip[3]+1)
	return first, nil
}

// startEtcd starts etcd on free loopback ports and waits for it to be
// healthy, retrying with new ports if one was taken meanwhile.
func (e *Env) startEtcd(ctx context.Context) error {
	var err error
	for range startAttempts {
		var ports []int
		ports, err = freePorts(2)
		if err != nil {
			return err
		}
		clientURL := "http://127.0.0.1:" + strconv.Itoa(ports[0])
		peerURL := "http://127.0.0.1:" + strconv.Itoa(ports[1])
		args := []string{
			"--name=kubetest",
			"--data-dir=" + e.etcdDataDir(),
			"--listen-client-urls=" + clientURL,
			"--advertise-client-urls=" + clientURL,
			"--listen-peer-urls=" + peerURL,
			"--initial-advertise-peer-urls=" + peerURL,
			"--initial-cluster=kubetest=" + peerURL,
			"--initial-cluster-state=new",
			// Tests do not need durability across a machine crash.
			"--unsafe-no-fsync",
		}
		var p *process
		p, err = startProcess(e.spawner, "etcd", e.bins.Etcd, args, filepath.Join(e.logDir, "etcd.log"))
		if err != nil {
			return err
		}
		e.mu.Lock()
		e.etcd = p
		e.mu.Unlock()
		err = waitFor(ctx, e.timeout, p, func(ctx context.Context) bool {
			return httpOK(ctx, http.DefaultClient, clientURL+"/health")
		})
		if err == nil {
			e.etcdURL = clientURL
			return nil
		}
		p.stop(etcdStopGrace)
		if !addrInUse(p) {
			return err
		}
	}
	return err
}

// startAPIServerFirst starts kube-apiserver for the first time, on a free
// port, retrying with another port if that one was taken meanwhile.
func (e *Env) startAPIServerFirst(ctx context.Context) error {
	var err error
	for range startAttempts {
		var ports []int
		ports, err = freePorts(1)
		if err != nil {
			return err
		}
		e.apiPort = ports[0]
		e.admin = e.configWithCert(e.adminCert, e.adminKey)
		err = e.StartAPIServer(ctx)
		if err == nil {
			return nil
		}
		e.mu.Lock()
		p := e.apiserver
		e.mu.Unlock()
		if p == nil || !addrInUse(p) {
			return err
		}
	}
	return err
}

func addrInUse(p *process) bool {
	return strings.Contains(tailFile(p.logPath, 50), "address already in use")
}

// apiServerArgs are the kube-apiserver flags, followed by
// Options.APIServerFlags. Everything else keeps its default, notably the
// default admission plugins (ServiceAccount included, see
// runDefaultServiceAccounts) and the watch cache.
func (e *Env) apiServerArgs() []string {
	args := []string{
		// Serve HTTPS only, on loopback only.
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(e.apiPort),
		"--cert-dir=" + e.pkiDir(),
		"--tls-cert-file=" + e.pki("apiserver.crt"),
		"--tls-private-key-file=" + e.pki("apiserver.key"),
		// Client certificates signed by the CA authenticate users.
		"--client-ca-file=" + e.pki("ca.crt"),
		"--etcd-servers=" + e.etcdURL,
		// Service account tokens (TokenRequest) are signed and checked
		// with an in-process key.
		"--service-account-issuer=" + ServiceAccountIssuer,
		"--service-account-key-file=" + e.pki("sa.pub"),
		"--service-account-signing-key-file=" + e.pki("sa.key"),
		"--service-cluster-ip-range=" + ServiceClusterIPRange,
		// RBAC only (system:masters bypasses it as in any cluster).
		"--authorization-mode=RBAC",
		// The lease/master-count reconcilers would publish 127.0.0.1 as the
		// kubernetes Service endpoint, which the API rejects (loopback).
		"--endpoint-reconciler-type=none",
		// podgate's DaemonSet runs privileged; let its manifests validate.
		"--allow-privileged=true",
		// On SIGTERM, end open watches instead of leaving them to the HTTP
		// server's shutdown, which waits for them up to --request-timeout
		// (60 s): a graceful stop then takes about a second.
		"--shutdown-watch-termination-grace-period=2s",
		"--profiling=false",
	}
	return append(args, e.extra...)
}

// StartAPIServer starts kube-apiserver, after StopAPIServer, on the same
// port and with the same etcd, and waits until it is ready.
func (e *Env) StartAPIServer(ctx context.Context) error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return errors.New("kubetest: environment is closed")
	}
	if e.apiserver != nil && e.apiserver.running() {
		e.mu.Unlock()
		return errors.New("kubetest: kube-apiserver is already running")
	}
	p, err := startProcess(e.spawner, "kube-apiserver", e.bins.APIServer, e.apiServerArgs(),
		filepath.Join(e.logDir, "kube-apiserver.log"))
	if err != nil {
		e.mu.Unlock()
		return err
	}
	e.apiserver = p
	e.mu.Unlock()

	transport, err := rest.TransportFor(e.Config())
	if err != nil {
		return fmt.Errorf("creating admin transport: %w", err)
	}
	client := &http.Client{Transport: transport}
	defer client.CloseIdleConnections()
	readyz := e.Config().Host + "/readyz"
	if err := waitFor(ctx, e.timeout, p, func(ctx context.Context) bool {
		return httpOK(ctx, client, readyz)
	}); err != nil {
		p.stop(apiServerStopGrace)
		return err
	}
	return nil
}

// StopAPIServer stops kube-apiserver gracefully (SIGTERM; SIGKILL if it
// has not exited after 15 s; it usually takes about a second) and waits for
// it to exit; etcd keeps running. Stopping a stopped API server does
// nothing.
func (e *Env) StopAPIServer() {
	e.mu.Lock()
	p := e.apiserver
	e.mu.Unlock()
	if p != nil {
		p.stop(apiServerStopGrace)
	}
}

// KillAPIServer kills kube-apiserver with SIGKILL, as in a crash: clients
// see their connections drop without a goodbye. StartAPIServer starts it
// again.
func (e *Env) KillAPIServer() {
	e.mu.Lock()
	p := e.apiserver
	e.mu.Unlock()
	if p != nil {
		p.stop(0)
	}
}

// RestartAPIServer stops kube-apiserver and starts it again on the same
// port with the same etcd data, and waits until it is ready. Clients and
// watches made before keep their configuration and reconnect.
func (e *Env) RestartAPIServer(ctx context.Context) error {
	e.StopAPIServer()
	return e.StartAPIServer(ctx)
}

// APIServerRunning reports whether the kube-apiserver process is alive.
func (e *Env) APIServerRunning() bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.apiserver != nil && e.apiserver.running()
}

// waitFor polls ready every 100 ms until it returns true, p exits, ctx is
// done or timeout passes.
func waitFor(ctx context.Context, timeout time.Duration, p *process, ready func(context.Context) bool) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		if ready(ctx) {
			return nil
		}
		select {
		case <-p.exited:
			return p.exitError()
		case <-ctx.Done():
			return fmt.Errorf("waiting for %s to be ready: %w; last lines of %s:\n%s",
				p.name, ctx.Err(), p.logPath, tailFile(p.logPath, 30))
		case <-tick.C:
		}
	}
}

// httpOK reports whether GET url answers 200.
func httpOK(ctx context.Context, client *http.Client, url string) bool {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return false
	}
	resp, err := client.Do(req)
	if err != nil {
		return false
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode == http.StatusOK
}

// Close stops the API server and etcd and waits for them to exit. It does
// not remove Options.Dir. Closing twice does nothing.
func (e *Env) Close() error {
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		return nil
	}
	e.closed = true
	etcd, apiserver := e.etcd, e.apiserver
	e.mu.Unlock()

	if e.saCancel != nil {
		e.saCancel()
		<-e.saDone
	}
	if apiserver != nil {
		apiserver.stop(apiServerStopGrace)
	}
	if etcd != nil {
		etcd.stop(etcdStopGrace)
	}
	e.spawner.stop()
	return nil
}

// Config returns a new copy of the admin client configuration: user
// AdminUser in group system:masters, authenticated by a client certificate.
func (e *Env) Config() *rest.Config {
	return rest.CopyConfig(e.admin)
}

// Client returns a clientset for the admin identity.
func (e *Env) Client() *kubernetes.Clientset {
	return e.client
}

// Host returns the API server URL, https://127.0.0.1:PORT.
func (e *Env) Host() string {
	return "https://127.0.0.1:" + strconv.Itoa(e.apiPort)
}

// CAData returns the PEM-encoded CA certificate that signed the API
// server's serving certificate and that it trusts for client certificates.
func (e *Env) CAData() []byte {
	return append([]byte(nil), e.ca.certPEM...)
}

// Dir returns the directory holding the certificates (pki/), etcd data
// (etcd-data/) and the logs (logs/).
func (e *Env) Dir() string { return e.dir }

// LogPaths returns the log files of kube-apiserver and etcd.
func (e *Env) LogPaths() (apiserver, etcd string) {
	return filepath.Join(e.logDir, "kube-apiserver.log"), filepath.Join(e.logDir, "etcd.log")
}

// LogTail returns about the last n lines of each process log, with headers.
func (e *Env) LogTail(n int) string {
	api, etcd := e.LogPaths()
	var b strings.Builder
	for _, p := range []string{api, etcd} {
		fmt.Fprintf(&b, "--- last %d lines of %s ---\n%s\n", n, p, tailFile(p, n))
	}
	return b.String()
}

func (e *Env) configWithCert(certPEM, keyPEM []byte) *rest.Config {
	return &rest.Config{
		Host: e.Host(),
		TLSClientConfig: rest.TLSClientConfig{
			CAData:   e.CAData(),
			CertData: certPEM,
			KeyData:  keyPEM,
		},
		QPS:   -1, // no client-side rate limit in tests
		Burst: -1,
	}
}
