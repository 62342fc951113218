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

.PHONY: help build test lint demo bench bench-policy clean

help: ## list targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  %-14s %s\n", $$1, $$2}'

build: ## build bin/podgate (static)
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags '$(LDFLAGS)' -o bin/podgate ./cmd/podgate

test: ## run all tests (tests that need root skip without it; CI runs as root)
	$(GO) test -count=1 ./...

lint: ## gofmt, go vet and staticcheck
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

demo: build ## the article's scenario in a netns lab: real connections vs. policy (run as root)
	bin/podgate lab -f $(ARTICLE)

bench: build ## podgate vs. kernel routing and iptables/ipset in a netns lab, quick subset (root; full: bin/podgate bench)
	bin/podgate bench --quick

bench-policy: ## policy table lookup and compile benchmarks
	$(GO) test -run '^$$' -bench . -benchmem ./policy/

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
dashboards: ## regenerate deploy/grafana/*.json from the Go generator (internal/dashtest checks them)
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
	PODGATE_SOAK=$(SOAK) PODGATE_SOAK_CSV=$(abspath $(SOAK_CSV)) $(GO) test -count=1 -v -timeout $(SOAK_TIMEOUT) -run '^TestSoak$$' ./internal/hostile/

clean: ## remove build output
	rm -rf bin
