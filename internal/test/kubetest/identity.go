package kubetest

import (
	"context"
	"fmt"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// ServiceAccountUser returns the user name Kubernetes gives a service
// account: system:serviceaccount:NAMESPACE:NAME. RBAC subjects of kind
// ServiceAccount match it.
func ServiceAccountUser(namespace, name string) string {
	return "system:serviceaccount:" + namespace + ":" + name
}

// ServiceAccountGroups returns the groups Kubernetes gives a service account
// of namespace: system:serviceaccounts and system:serviceaccounts:NAMESPACE.
func ServiceAccountGroups(namespace string) []string {
	return []string{"system:serviceaccounts", "system:serviceaccounts:" + namespace}
}

// ConfigFor returns a client configuration authenticating as user with the
// given groups through a new client certificate signed by the Env's CA.
// The API server adds the group system:authenticated. No RBAC rule is
// created: the identity can do what the cluster's roles grant it. For a
// service account, ConfigFor(ServiceAccountUser(ns, name),
// ServiceAccountGroups(ns)...) works without the ServiceAccount object;
// ServiceAccountConfig uses a real token instead.
func (e *Env) ConfigFor(user string, groups ...string) (*rest.Config, error) {
	cert, key, err := e.ca.issueClient(user, groups)
	if err != nil {
		return nil, fmt.Errorf("issuing client certificate for %q: %w", user, err)
	}
	return e.configWithCert(cert, key), nil
}

// ServiceAccountConfig returns a client configuration that authenticates
// with a bound token of the existing ServiceAccount namespace/name,
// obtained through the TokenRequest API (valid for 24 hours), as a pod
// running under that ServiceAccount would.
func (e *Env) ServiceAccountConfig(ctx context.Context, namespace, name string) (*rest.Config, error) {
	expiration := int64(24 * 60 * 60)
	tr, err := e.client.CoreV1().ServiceAccounts(namespace).CreateToken(ctx, name,
		&authenticationv1.TokenRequest{Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: &expiration}},
		metav1.CreateOptions{})
	if err != nil {
		return nil, fmt.Errorf("requesting a token for service account %s/%s: %w", namespace, name, err)
	}
	return &rest.Config{
		Host:            e.Host(),
		TLSClientConfig: rest.TLSClientConfig{CAData: e.CAData()},
		BearerToken:     tr.Status.Token,
		QPS:             -1,
		Burst:           -1,
	}, nil
}

// WriteKubeconfig writes a kubeconfig file for cfg (host, CA, and client
// certificate or bearer token, all inlined) to path, for running a binary
// such as the podgate agent against the Env.
func WriteKubeconfig(path string, cfg *rest.Config) error {
	kc := clientcmdapi.NewConfig()
	kc.Clusters["kubetest"] = &clientcmdapi.Cluster{
		Server:                   cfg.Host,
		CertificateAuthorityData: cfg.CAData,
	}
	kc.AuthInfos["kubetest"] = &clientcmdapi.AuthInfo{
		ClientCertificateData: cfg.CertData,
		ClientKeyData:         cfg.KeyData,
		Token:                 cfg.BearerToken,
	}
	kc.Contexts["kubetest"] = &clientcmdapi.Context{Cluster: "kubetest", AuthInfo: "kubetest"}
	kc.CurrentContext = "kubetest"
	if err := clientcmd.WriteToFile(*kc, path); err != nil {
		return fmt.Errorf("writing kubeconfig %s: %w", path, err)
	}
	return nil
}
