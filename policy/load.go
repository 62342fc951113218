package policy

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/util/validation/field"
	utilyaml "k8s.io/apimachinery/pkg/util/yaml"
	sigsjson "sigs.k8s.io/json"
	npav1alpha1 "sigs.k8s.io/network-policy-api/apis/v1alpha1"
	npav1beta1 "sigs.k8s.io/network-policy-api/apis/v1beta1"
	"sigs.k8s.io/yaml"
)

// Source locates an object in the files [Load] read.
type Source struct {
	File string
	// Doc is the 1-based YAML document in the file.
	Doc int
	// Item is the 0-based index in a List's items, or -1.
	Item int
}

// String returns "file: document N" or "file: document N, items[I]".
func (s Source) String() string {
	if s.Item >= 0 {
		return fmt.Sprintf("%s: document %d, items[%d]", s.File, s.Doc, s.Item)
	}
	return fmt.Sprintf("%s: document %d", s.File, s.Doc)
}

// Object is a manifest object of a kind the policy engine does not use, kept
// for other readers (the lab reads its own kinds from the same files).
type Object struct {
	Source     Source
	APIVersion string
	Kind       string
	Namespace  string
	Name       string
	// JSON is the object as JSON.
	JSON []byte
}

// Manifests is what [Load] read: the cluster objects with their sources,
// the objects of other kinds, and notes for the user.
type Manifests struct {
	Cluster
	// Sources maps "Kind namespace/name" (cluster-scoped kinds such as
	// Namespace and ClusterNetworkPolicy: "Kind name") to where the object
	// was read.
	Sources map[string]Source
	// Other holds objects of kinds Load does not read into the Cluster.
	Other []Object
	// Notes are things the user should hear about that are not errors:
	// skipped files and objects, API server warnings.
	Notes []string
}

// ErrManifest is wrapped by the errors [Load] returns for unreadable or
// malformed manifests.
var ErrManifest = errors.New("bad manifest")

// clusterScoped are the kinds Load reads that have no namespace.
var clusterScoped = map[string]bool{
	"Namespace": true, "Node": true,
	KindClusterNetworkPolicy: true, KindAdminNetworkPolicy: true, KindBaselineAdminNetworkPolicy: true,
}

// objectKey names an object for duplicate detection and Sources.
func objectKey(kind, ns, name string) string {
	if clusterScoped[kind] {
		return kind + " " + name
	}
	return kind + " " + ns + "/" + name
}

// ErrTooLarge is wrapped (besides [ErrManifest]) by the errors [Load]
// returns for a manifest file, or all of them together, over the size
// limits of the [Loader].
var ErrTooLarge = errors.New("manifests too large")

// Default limits of a [Loader].
const (
	DefaultMaxFileBytes  int64 = 64 << 20
	DefaultMaxTotalBytes int64 = 256 << 20
)

// Loader reads manifests like [Load], within size limits: only regular
// files (symbolic links to them included) and directories of them are
// read, each file at most MaxFileBytes, all files together at most
// MaxTotalBytes. A device, FIFO or socket is an error before anything is
// read from it (a FIFO is opened without waiting for a writer), so that
// neither /dev/zero nor a named pipe can make a read grow without bound or
// block. The zero value has the default limits. A Loader may be used from
// several goroutines at once.
type Loader struct {
	// MaxFileBytes bounds each file (default DefaultMaxFileBytes).
	MaxFileBytes int64
	// MaxTotalBytes bounds all files of one Load together (default
	// DefaultMaxTotalBytes).
	MaxTotalBytes int64
	// FileLimitName and TotalLimitName name the settings that raise the
	// limits, for the errors (for example a command's flags); default
	// "Loader.MaxFileBytes" and "Loader.MaxTotalBytes".
	FileLimitName, TotalLimitName string
}

func (ld Loader) withDefaults() Loader {
	if ld.MaxFileBytes <= 0 {
		ld.MaxFileBytes = DefaultMaxFileBytes
	}
	if ld.MaxTotalBytes <= 0 {
		ld.MaxTotalBytes = DefaultMaxTotalBytes
	}
	if ld.FileLimitName == "" {
		ld.FileLimitName = "Loader.MaxFileBytes"
	}
	if ld.TotalLimitName == "" {
		ld.TotalLimitName = "Loader.MaxTotalBytes"
	}
	return ld
}

// Load reads Namespaces, Pods, Nodes, NetworkPolicies, Services,
// EndpointSlices (discovery.k8s.io/v1), ClusterNetworkPolicies
// (policy.networking.k8s.io/v1beta1 and v1alpha2), AdminNetworkPolicies and
// BaselineAdminNetworkPolicies (policy.networking.k8s.io/v1alpha1) from
// files or directories of YAML or JSON manifests, with the default limits
// of a [Loader]. A directory contributes its *.yaml, *.yml and *.json files
// (not subdirectories).
// Documents may be multi-document YAML or a kind: List such as kubectl get
// -o yaml prints. Objects are decoded strictly (unknown or duplicate fields
// are errors), defaulted and validated as the API server would; all
// problems are returned together, each naming the file, the document, the
// object and the field.
func Load(paths ...string) (*Manifests, error) { return Loader{}.Load(paths...) }

// Load reads manifests as the package's [Load] does, within ld's limits.
func (ld Loader) Load(paths ...string) (*Manifests, error) {
	if len(paths) == 0 {
		return nil, fmt.Errorf("%w: no manifest files given", ErrManifest)
	}
	l := &loader{m: &Manifests{Sources: make(map[string]Source)}, lim: ld.withDefaults()}
	for _, p := range paths {
		l.path(p)
	}
	if len(l.errs) > 0 {
		return nil, errors.Join(l.errs...)
	}
	return l.m, nil
}

type loader struct {
	m    *Manifests
	errs []error
	lim  Loader
	// read is how many bytes the files read so far had; full is set once
	// the total limit was hit (later files are not read).
	read int64
	full bool
}

func (l *loader) fail(format string, args ...any) {
	l.errs = append(l.errs, fmt.Errorf("%w: %s", ErrManifest, fmt.Sprintf(format, args...)))
}

func (l *loader) path(p string) {
	fi, err := os.Stat(p)
	if err != nil {
		l.fail("%v", err)
		return
	}
	if !fi.IsDir() {
		l.file(p)
		return
	}
	entries, err := os.ReadDir(p)
	if err != nil {
		l.fail("%v", err)
		return
	}
	n := 0
	for _, e := range entries {
		name := filepath.Join(p, e.Name())
		switch ext := strings.ToLower(filepath.Ext(e.Name())); {
		case e.IsDir():
			l.m.Notes = append(l.m.Notes, fmt.Sprintf("%s: skipped directory (directories are not read recursively)", name))
		case ext == ".yaml" || ext == ".yml" || ext == ".json":
			l.file(name)
			n++
		default:
			l.m.Notes = append(l.m.Notes, fmt.Sprintf("%s: skipped file (not .yaml, .yml or .json)", name))
		}
	}
	if n == 0 {
		l.fail("%s: directory has no .yaml, .yml or .json files", p)
	}
}

// readFile reads a regular file within the limits.
func (l *loader) readFile(name string) ([]byte, bool) {
	if l.full {
		return nil, false
	}
	// O_NONBLOCK: opening a FIFO must not wait for a writer; it makes no
	// difference to a regular file.
	f, err := os.OpenFile(name, os.O_RDONLY|syscall.O_NONBLOCK, 0)
	if err != nil {
		l.fail("%v", err)
		return nil, false
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		l.fail("%v", err)
		return nil, false
	}
	if !fi.Mode().IsRegular() {
		l.fail("%s: not a regular file (%s): manifests are read from regular files and directories of them", name, fileType(fi.Mode()))
		return nil, false
	}
	budget := min(l.lim.MaxFileBytes, l.lim.MaxTotalBytes-l.read)
	data, err := io.ReadAll(io.LimitReader(f, budget+1))
	if err != nil {
		l.fail("%s: %v", name, err)
		return nil, false
	}
	if int64(len(data)) > budget {
		if budget == l.lim.MaxFileBytes {
			l.errs = append(l.errs, tooLarge(fmt.Sprintf("%s: larger than %s, the limit per manifest file (raise it with %s)",
				name, formatBytes(l.lim.MaxFileBytes), l.lim.FileLimitName)))
		} else {
			l.errs = append(l.errs, tooLarge(fmt.Sprintf("%s: with this file the manifests are larger than %s, the limit for all files together (raise it with %s)",
				name, formatBytes(l.lim.MaxTotalBytes), l.lim.TotalLimitName)))
			l.full = true
		}
		return nil, false
	}
	l.read += int64(len(data))
	return data, true
}

// tooLarge is an error that is both [ErrManifest] and [ErrTooLarge].
type tooLarge string

func (e tooLarge) Error() string { return ErrManifest.Error() + ": " + string(e) }

func (e tooLarge) Is(target error) bool { return target == ErrManifest || target == ErrTooLarge }

// fileType names the type of a file that is not a regular one.
func fileType(m os.FileMode) string {
	switch {
	case m&os.ModeNamedPipe != 0:
		return "named pipe"
	case m&os.ModeCharDevice != 0:
		return "character device"
	case m&os.ModeDevice != 0:
		return "block device"
	case m&os.ModeSocket != 0:
		return "socket"
	case m.IsDir():
		return "directory"
	}
	return m.Type().String()
}

// formatBytes prints a size in MiB when it is a whole number of them.
func formatBytes(n int64) string {
	if n >= 1<<20 && n%(1<<20) == 0 {
		return fmt.Sprintf("%d MiB", n>>20)
	}
	return fmt.Sprintf("%d bytes", n)
}

func (l *loader) file(name string) {
	data, ok := l.readFile(name)
	if !ok {
		return
	}
	r := utilyaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
	objects := 0
	for doc := 1; ; doc++ {
		data, err := r.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			l.fail("%s: document %d: %v", name, doc, err)
			return
		}
		if len(bytes.TrimSpace(data)) == 0 {
			continue
		}
		j, err := yaml.YAMLToJSONStrict(data)
		if err != nil {
			l.fail("%s: document %d: %v", name, doc, err)
			continue
		}
		if bytes.Equal(bytes.TrimSpace(j), []byte("null")) {
			continue // a document of comments only
		}
		objects++
		l.object(Source{File: name, Doc: doc, Item: -1}, j)
	}
	if objects == 0 {
		l.m.Notes = append(l.m.Notes, fmt.Sprintf("%s: no objects in file", name))
	}
}

// readKinds are the kinds Load reads into the Cluster, with their
// apiVersions.
var readKinds = map[string][]string{
	"Namespace":                    {"v1"},
	"Pod":                          {"v1"},
	"NetworkPolicy":                {"networking.k8s.io/v1"},
	"Service":                      {"v1"},
	"EndpointSlice":                {"discovery.k8s.io/v1"},
	"Node":                         {"v1"},
	KindClusterNetworkPolicy:       clusterKinds[KindClusterNetworkPolicy],
	KindAdminNetworkPolicy:         clusterKinds[KindAdminNetworkPolicy],
	KindBaselineAdminNetworkPolicy: clusterKinds[KindBaselineAdminNetworkPolicy],
}

// header is the part of every object that identifies it.
type header struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Metadata   struct {
		Name      string `json:"name"`
		Namespace string `json:"namespace"`
	} `json:"metadata"`
}

func (l *loader) object(src Source, data []byte) {
	var h header
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(data, &h); err != nil {
		l.fail("%s: not a Kubernetes object: %v", src, err)
		return
	}
	if h.Kind == "" {
		l.fail("%s: kind: Required value", src)
		return
	}
	if h.APIVersion == "" {
		l.fail("%s: %s %s: apiVersion: Required value", src, h.Kind, h.Metadata.Name)
		return
	}
	if strings.HasSuffix(h.Kind, "List") {
		l.list(src, h, data)
		return
	}
	ns := h.Metadata.Namespace
	if ns == "" && !clusterScoped[h.Kind] {
		ns = defaultNamespace
	}
	what := fmt.Sprintf("%s %s", h.Kind, h.Metadata.Name)
	if !clusterScoped[h.Kind] {
		what = fmt.Sprintf("%s %s/%s", h.Kind, ns, h.Metadata.Name)
	}
	want := readKinds[h.Kind]
	if want == nil {
		l.m.Other = append(l.m.Other, Object{Source: src, APIVersion: h.APIVersion, Kind: h.Kind, Namespace: h.Metadata.Namespace, Name: h.Metadata.Name, JSON: data})
		return
	}
	if !slices.Contains(want, h.APIVersion) {
		l.fail("%s: %s: apiVersion: Unsupported value: %q: supported values: %s", src, what, h.APIVersion, quoteAll(want))
		return
	}
	if clusterScoped[h.Kind] && h.Kind != "Namespace" && ns != "" {
		l.m.Notes = append(l.m.Notes, fmt.Sprintf("%s: %s: metadata.namespace %q is ignored: %s is cluster-scoped", src, what, ns, h.Kind))
		ns = ""
	}
	key := objectKey(h.Kind, ns, h.Metadata.Name)
	if prev, dup := l.m.Sources[key]; dup {
		l.fail("%s: %s: already declared at %s", src, what, prev)
		return
	}
	var errs []error
	switch h.Kind {
	case "Namespace":
		obj := &corev1.Namespace{}
		if errs = decodeStrict(data, obj); errs == nil {
			errs = fieldErrors(validateNamespace(obj))
			l.m.Namespaces = append(l.m.Namespaces, obj)
		}
	case "Pod":
		obj := &corev1.Pod{}
		if errs = decodeStrict(data, obj); errs == nil {
			obj.Namespace = ns
			errs = fieldErrors(validatePod(obj))
			l.m.Pods = append(l.m.Pods, obj)
		}
	case "Service":
		obj := &corev1.Service{}
		if errs = decodeStrict(data, obj); errs == nil {
			obj = DefaultService(obj)
			errs = fieldErrors(ValidateService(obj))
			l.m.Services = append(l.m.Services, obj)
		}
	case "EndpointSlice":
		obj := &discoveryv1.EndpointSlice{}
		if errs = decodeStrict(data, obj); errs == nil {
			obj = DefaultEndpointSlice(obj)
			errs = fieldErrors(ValidateEndpointSlice(obj))
			l.m.EndpointSlices = append(l.m.EndpointSlices, obj)
		}
	case "Node":
		obj := &corev1.Node{}
		if errs = decodeStrict(data, obj); errs == nil {
			obj.Namespace = ""
			errs = fieldErrors(validateNode(obj))
			l.m.Nodes = append(l.m.Nodes, obj)
		}
	case KindClusterNetworkPolicy:
		obj := &npav1beta1.ClusterNetworkPolicy{}
		if errs = decodeStrict(data, obj); errs == nil {
			obj.Namespace = ""
			errs = fieldErrors(append(missingClusterFields(h.Kind, data), ValidateClusterNetworkPolicy(obj)...))
			l.clusterNotes(src, what, fromClusterNetworkPolicy(obj), errs)
			l.m.ClusterNetworkPolicies = append(l.m.ClusterNetworkPolicies, obj)
		}
	case KindAdminNetworkPolicy:
		obj := &npav1alpha1.AdminNetworkPolicy{}
		if errs = decodeStrict(data, obj); errs == nil {
			obj.Namespace = ""
			errs = fieldErrors(append(missingClusterFields(h.Kind, data), ValidateAdminNetworkPolicy(obj)...))
			l.clusterNotes(src, what, fromAdminNetworkPolicy(obj), errs)
			l.m.AdminNetworkPolicies = append(l.m.AdminNetworkPolicies, obj)
		}
	case KindBaselineAdminNetworkPolicy:
		obj := &npav1alpha1.BaselineAdminNetworkPolicy{}
		if errs = decodeStrict(data, obj); errs == nil {
			obj.Namespace = ""
			errs = fieldErrors(append(missingClusterFields(h.Kind, data), ValidateBaselineAdminNetworkPolicy(obj)...))
			l.clusterNotes(src, what, fromBaselineAdminNetworkPolicy(obj), errs)
			l.m.BaselineAdminNetworkPolicies = append(l.m.BaselineAdminNetworkPolicies, obj)
		}
	case "NetworkPolicy":
		obj := &networkingv1.NetworkPolicy{}
		if errs = decodeStrict(data, obj); errs == nil {
			obj = DefaultNetworkPolicy(obj)
			errs = fieldErrors(ValidateNetworkPolicy(obj))
			for _, w := range NetworkPolicyWarnings(obj) {
				l.m.Notes = append(l.m.Notes, fmt.Sprintf("%s: %s: warning: %s", src, what, w))
			}
			l.m.Policies = append(l.m.Policies, obj)
		}
	}
	for _, err := range errs {
		l.errs = append(l.errs, fmt.Errorf("%w: %s: %s: %w", ErrInvalid, src, what, err))
	}
	l.m.Sources[key] = src
}

func (l *loader) list(src Source, h header, data []byte) {
	var list struct {
		Items []jsonRaw `json:"items"`
	}
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(data, &list); err != nil {
		l.fail("%s: %s: items: %v", src, h.Kind, err)
		return
	}
	for i, item := range list.Items {
		l.object(Source{File: src.File, Doc: src.Doc, Item: i}, item)
	}
}

// jsonRaw keeps a list item's bytes for a second decoding.
type jsonRaw []byte

// UnmarshalJSON implements json.Unmarshaler.
func (r *jsonRaw) UnmarshalJSON(b []byte) error {
	*r = slices.Clone(b)
	return nil
}

// decodeStrict decodes JSON into obj case-sensitively and reports unknown
// and duplicate fields, as the API server's strict field validation does.
func decodeStrict(data []byte, obj any) []error {
	strict, err := sigsjson.UnmarshalStrict(data, obj, sigsjson.DisallowDuplicateFields, sigsjson.DisallowUnknownFields)
	if err != nil {
		return []error{err}
	}
	return strict
}

func fieldErrors(el field.ErrorList) []error {
	out := make([]error, len(el))
	for i, e := range el {
		out[i] = e
	}
	return out
}

// clusterNotes adds the warnings about a valid cluster policy to the
// notes.
func (l *loader) clusterNotes(src Source, what string, p cpolicy, errs []error) {
	if len(errs) > 0 {
		return
	}
	for _, w := range clusterPolicyWarnings(&p) {
		l.m.Notes = append(l.m.Notes, fmt.Sprintf("%s: %s: warning: %s", src, what, w))
	}
}

func quoteAll(ss []string) string {
	q := make([]string, len(ss))
	for i, s := range ss {
		q[i] = fmt.Sprintf("%q", s)
	}
	return strings.Join(q, ", ")
}

// missingClusterFields reports the required fields of a cluster policy
// manifest that decoding into the Go type cannot tell from zero values:
// spec.priority, and the selectors of pods subjects and peers.
func missingClusterFields(kind string, data []byte) field.ErrorList {
	var obj map[string]any
	if err := sigsjson.UnmarshalCaseSensitivePreserveInts(data, &obj); err != nil {
		return nil // decodeStrict reported it
	}
	var allErrs field.ErrorList
	spec, _ := obj["spec"].(map[string]any)
	sp := field.NewPath("spec")
	if spec == nil {
		return field.ErrorList{field.Required(sp, "")}
	}
	if _, ok := spec["priority"]; !ok && kind != KindBaselineAdminNetworkPolicy {
		allErrs = append(allErrs, field.Required(sp.Child("priority"), ""))
	}
	required := []string{"podSelector"}
	if kind != KindClusterNetworkPolicy {
		required = append(required, "namespaceSelector")
	}
	pods := func(holder any, fp *field.Path) {
		m, _ := holder.(map[string]any)
		p, ok := m["pods"].(map[string]any)
		if !ok {
			return
		}
		for _, r := range required {
			if _, ok := p[r]; !ok {
				allErrs = append(allErrs, field.Required(fp.Child("pods", r), ""))
			}
		}
	}
	pods(spec["subject"], sp.Child("subject"))
	for _, dir := range []struct{ rules, peers string }{{"ingress", "from"}, {"egress", "to"}} {
		rules, _ := spec[dir.rules].([]any)
		for i, r := range rules {
			rm, _ := r.(map[string]any)
			peers, _ := rm[dir.peers].([]any)
			for j, peer := range peers {
				pods(peer, sp.Child(dir.rules).Index(i).Child(dir.peers).Index(j))
			}
		}
	}
	return allErrs
}

// SkippedNotes returns a note for each object of a kind the policy engine
// does not read, except kinds the caller reads itself.
func (m *Manifests) SkippedNotes(readByCaller ...string) []string {
	var out []string
	for _, o := range m.Other {
		if slices.Contains(readByCaller, o.Kind) {
			continue
		}
		name := o.Name
		if o.Namespace != "" {
			name = o.Namespace + "/" + o.Name
		}
		out = append(out, fmt.Sprintf("%s: skipped %s %s (podgate reads Namespace, Pod, Node, NetworkPolicy, Service, EndpointSlice, ClusterNetworkPolicy, AdminNetworkPolicy and BaselineAdminNetworkPolicy)", o.Source, o.Kind, name))
	}
	return out
}
