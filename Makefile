# podgate build, test and demo targets. `make help` lists them.
GO          ?= go
# Build, test and lint with Go 1.27.3, which the go command fetches from the
# Go module proxy: govulncheck finds standard-library vulnerabilities
# reachable from podgate in this machine's Go 1.26.8 (fixed in 1.26.9 and
# 1.26.10, which are not served here). The module still says go 1.26.
export GOTOOLCHAIN ?= go1.27.3
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
VERSION     ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS     := -s -w -X main.version=$(VERSION)
ARTICLE     := deploy/examples/aks-network-policies

.PHONY: help build test lint demo bench bench-policy bench-cluster clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

build: ## build bin/podgate (static)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/podgate ./cmd/podgate

# make test first installs what the tests need: the Debian packages of
# hack/packages.txt (as root; without root it prints the command and stops)
# and a real kube-apiserver and etcd (hack/kube-binaries.sh: about 5 minutes
# once, then cached). So a test whose tool is missing fails instead of
# skipping; only podman and the Prometheus end-to-end test need root too,
# so they are required only as root. Plain `go test ./...` skips instead.
TEST_REQUIRE := PODGATE_REQUIRE_KUBE=1 $(if $(filter 0,$(shell id -u)),PODGATE_REQUIRE_PODMAN=1 PODGATE_REQUIRE_PROMETHEUS=1)

test: ## install what the tests need (Debian packages as root, kube-apiserver/etcd once), then run all tests
	@bash hack/deps.sh test
	@bash hack/kube-binaries.sh >/dev/null
	$(TEST_REQUIRE) $(GO) test -count=1 ./...

lint: ## gofmt, go vet and staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

demo: build ## the article's scenario on three nodes in a netns lab: real connections vs. policy (run as root; installs iptables if missing)
	@bash hack/deps.sh demo
	bin/podgate lab -f $(ARTICLE)/three-nodes

.PHONY: deps
deps: ## install the Debian packages that demo and test need, if missing (as root; hack/packages.txt)
	@bash hack/deps.sh demo test

bench: build ## podgate vs. kernel routing and iptables/ipset in a netns lab, quick subset (root; full: bin/podgate bench)
	bin/podgate bench --quick

bench-policy: ## policy table lookup and compile benchmarks
	$(GO) test -run '^$$' -bench . -benchmem ./policy/

# CLUSTER_WRITES API writes (120 by default; the test's own default in
# `make test` is 10), each timed until real probes show all three agents
# enforcing it.
CLUSTER_WRITES ?= 120

bench-cluster: ## API write -> every agent enforcing, p50/p99: 3 agents on one real kube-apiserver in a netns lab (root; CLUSTER_WRITES)
	@bash hack/deps.sh test
	@bash hack/kube-binaries.sh >/dev/null
	PODGATE_REQUIRE_KUBE=1 PODGATE_CLUSTER_WRITES=$(CLUSTER_WRITES) $(GO) test -run '^TestClusterWriteToEnforce$$' -count=1 -v ./internal/lab/

.PHONY: bench-scale
bench-scale: ## control plane at scale: API server with 10,000 pods and 2,000 NetworkPolicies; one agent's memory, time to ready, write-to-table latency under churn (docs/control-plane-at-scale.md)
	@bash hack/kube-binaries.sh >/dev/null
	PODGATE_SCALE=1 PODGATE_REQUIRE_KUBE=1 $(GO) test -count=1 -run '^TestControlPlaneAtScale$$' -v -timeout 30m ./k8swatch/

.PHONY: image deploy-check

image: ## container image with podman (FROM scratch + bin/podgate), then `podgate version` in it
	VERSION=$(VERSION) bash hack/image.sh

deploy-check: ## deploy/ tests: manifest security, kustomize, server-side dry run, RBAC, image
	$(GO) test -count=1 -v ./deploy/

.PHONY: vuln
vuln: ## govulncheck against the Go vulnerability database from the module proxy (golang.org/x/vulndb)
	bash hack/govulncheck.sh

.PHONY: generate generate-check
generate: ## regenerate fastpath/offload's BPF objects with bpf2go (installs clang, llvm, libbpf-dev when missing, as root)
	bash hack/bpf-generate.sh

generate-check: ## regenerate the BPF objects and fail if the committed ones differ (same clang version needed)
	bash hack/bpf-generate.sh --check

.PHONY: dashboards
dashboards: ## regenerate deploy/grafana/*.json from the Go generator (internal/test/dashtest checks them)
	$(GO) run ./deploy/grafana/gen -dir deploy/grafana

FUZZTIME ?= 20s
.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZTIME (default 20s) each
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./fastpath/packet/
	$(GO) test -run '^$$' -fuzz '^FuzzModel$$' -fuzztime $(FUZZTIME) ./fastpath/conntrack/
	$(GO) test -run '^$$' -fuzz '^FuzzLoad$$' -fuzztime $(FUZZTIME) ./policy/
	$(GO) test -run '^$$' -fuzz '^FuzzCompile$$' -fuzztime $(FUZZTIME) ./policy/

SOAK         ?= 10m
SOAK_CSV     ?= bin/soak.csv
SOAK_TIMEOUT ?= 3h
.PHONY: soak
soak: ## agent soak in a netns lab: mixed traffic and policy churn for SOAK (default 10m), samples to SOAK_CSV (root)
	@mkdir -p $(dir $(SOAK_CSV))
	PODGATE_SOAK=$(SOAK) PODGATE_SOAK_CSV=$(abspath $(SOAK_CSV)) $(GO) test -count=1 -v -timeout $(SOAK_TIMEOUT) -run '^TestSoak$$' ./internal/test/hostile/

SOAK_PNG ?= $(SOAK_CSV:.csv=.png)
.PHONY: soak-plot
soak-plot: ## plot SOAK_CSV (memory, goroutines, files, flows) into SOAK_PNG
	$(GO) run ./hack/soakplot -in $(SOAK_CSV) -out $(SOAK_PNG)

clean: ## remove build output
	rm -rf bin
