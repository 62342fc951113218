// Package deploy holds podgate's Kubernetes manifests: the Namespace, the
// ServiceAccount, the read-only RBAC, the agent DaemonSet and the
// kustomization that installs them (kubectl apply -k deploy/). README.md
// beside this file explains every privilege the agent gets.
//
// The package has no Go API; its tests (make deploy-check) check the
// manifests' security properties, render the kustomization with krusty,
// apply every object with a server-side dry run against a real
// kube-apiserver (internal/test/kubetest), check the agent's RBAC with its own
// ServiceAccount token, and build and run the container image with podman
// (hack/image.sh).
//
// Every manifest lives at the top level of this directory; examples/ holds
// scenario inputs for the policy CLI, not objects to install.
package deploy
