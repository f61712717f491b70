# lifeboat — make help lists the targets.

GO       ?= go
VERSION  ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
TOOLS    := $(CURDIR)/bin/tools
UNIT_PKGS = $(shell $(GO) list ./... | grep -v /integration)

# `make run` keeps everything under ./.lifeboat; as root the sockets use their default paths.
RUN_DIR  := $(CURDIR)/.lifeboat
RUN_ARGS := --root $(RUN_DIR)/data
ifneq ($(shell id -u),0)
RUN_ARGS += --socket $(RUN_DIR)/lifeboat.sock --admin-socket $(RUN_DIR)/admin.sock
endif

.PHONY: help build run unit integration lint test tools bench fuzz fuzz-short soak clean image manifests dashboard

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-z-]+:.*## / {printf "  %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)

build: ## build bin/lifeboat
	$(GO) build -ldflags "-X main.version=$(VERSION)" -o bin/lifeboat ./cmd/lifeboat

# `make image`: a Linux binary without cgo (the image has no libc), then hack/image makes it the
# image. IMAGE names it; empty means hack/image's default, ghcr.io/lifeboat-dev/lifeboat:$(VERSION).
# SOURCE_DATE_EPOCH (the commit time unless set) is every timestamp in the image, so the same
# binary gives the same digest. GOARCH=arm64 make image builds an arm64 image. hack/image runs
# on this machine whatever GOARCH says, hence the empty GOOS and GOARCH on its line.
# integration/image_test.go builds the image the same way: keep the two in step.
IMAGE             ?=
SOURCE_DATE_EPOCH ?= $(shell git log -1 --format=%ct 2>/dev/null || echo 0)
REVISION          ?= $(shell git rev-parse HEAD 2>/dev/null)

image: ## build bin/lifeboat-image.tar, the DaemonSet's container image
	CGO_ENABLED=0 GOOS=linux $(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o bin/lifeboat-static ./cmd/lifeboat
	GOOS= GOARCH= SOURCE_DATE_EPOCH=$(SOURCE_DATE_EPOCH) $(GO) run ./hack/image -binary bin/lifeboat-static \
	  -version $(VERSION) -revision "$(REVISION)" -name "$(IMAGE)" -out bin/lifeboat-image.tar

run: build ## build and run `lifeboat serve` with data under ./.lifeboat
	@mkdir -p $(RUN_DIR)
	bin/lifeboat serve $(RUN_ARGS)

unit: ## unit tests with the race detector (everything but the integration suite)
	$(GO) test -race -count=1 $(UNIT_PKGS)

# TestAdversarialFills and TestAdversarialCluster run in `make soak` only: the first takes over
# 30 s, however small, because the abandoned fills lifeboat lets run (max_abandoned_fills) end
# only at the stall cut-off; the second attacks a cluster for 30 s (LIFEBOAT_ADVERSARY_DURATION).
integration: tools ## end-to-end tests against real containerd, ctr, runc and a registry (needs root)
	LIFEBOAT_TOOLS_DIR=$(TOOLS) $(GO) test -count=1 -timeout 15m -v -skip '^(TestAdversarialFills|TestAdversarialCluster)$$' ./integration/...

lint: tools ## gofmt check, go vet, staticcheck; the Helm chart, manifests, dashboard and alerts (deploy/)
	@out=$$(gofmt -l $$(git ls-files '*.go' 2>/dev/null || find . -name '*.go' -not -path './bin/*')); \
	  if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi
	$(GO) vet ./...
	$(TOOLS)/staticcheck ./...
	@# deploy/ is a module of its own (it needs Helm, k8s.io/api and Prometheus' PromQL parser).
	@# Its tests lint and render the Helm chart with Helm's packages, decode every object strictly
	@# into the Kubernetes API types, check that deploy/kubernetes is the chart's default render,
	@# and check the Grafana dashboard. deploy/config.toml is checked by `make unit`.
	cd deploy && $(GO) vet ./... && $(TOOLS)/staticcheck ./... && $(GO) test -count=1 ./...
	@# The alerts: promtool checks the rules and runs their unit tests (*_test.yaml beside them).
	$(TOOLS)/promtool check rules deploy/prometheus/lifeboat-rules.yaml
	cd deploy/prometheus && $(TOOLS)/promtool test rules *_test.yaml

manifests: ## regenerate deploy/kubernetes from the Helm chart (deploy/helm/lifeboat) with its default values
	cd deploy && $(GO) test -count=1 -run '^TestPlainManifests$$' ./kubernetes -update

dashboard: ## regenerate deploy/grafana/lifeboat.json from its Go definition (deploy/grafana/dashboard.go)
	cd deploy && $(GO) test -count=1 -run '^TestDashboardFile$$' ./grafana -update

test: lint unit fuzz-short integration ## everything CI runs: lint, unit, a short fuzz run and integration

tools: ## install pinned containerd, ctr, shim, crane, registry, staticcheck and promtool into bin/tools
	@bash hack/tools.sh

bench: tools ## benchmarks into docs/benchmarks.md and .json, as ratios to baselines measured in the same run
	$(GO) run ./hack/bench -tools $(TOOLS) -out docs/benchmarks.md -json docs/benchmarks.json

soak: tools ## the long reliability drills: 60 s of 200-client load, adversarial runs on one node and on a cluster, crash and full-disk drills 5 times (needs root)
	LIFEBOAT_TOOLS_DIR=$(TOOLS) LIFEBOAT_LOAD_DURATION=60s $(GO) test -count=1 -timeout 20m -v -run '^TestLoad$$' ./integration/
	LIFEBOAT_TOOLS_DIR=$(TOOLS) $(GO) test -count=1 -timeout 20m -v -run '^TestAdversarialFills$$' ./integration/
	LIFEBOAT_TOOLS_DIR=$(TOOLS) $(GO) test -count=1 -timeout 20m -v -run '^TestAdversarialCluster$$' ./integration/
	LIFEBOAT_TOOLS_DIR=$(TOOLS) $(GO) test -count=5 -timeout 20m -v -run '^(TestCrashDuringColdPulls|TestFullDisk)$$' ./integration/

FUZZTIME ?= 30s
fuzz: ## run every go test -fuzz target for FUZZTIME each (default 30s; their seed corpora run in make unit)
	@GO=$(GO) bash hack/fuzz.sh $(FUZZTIME)

fuzz-short: ## every fuzz target for a fixed number of executions (part of make test; make fuzz runs them longer)
	@GO=$(GO) bash hack/fuzz.sh short

clean: ## remove build outputs, the image included (not bin/tools, not ./.lifeboat)
	rm -f bin/lifeboat bin/lifeboat-static bin/lifeboat-image.tar
