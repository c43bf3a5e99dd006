# edgewire build, test and demo entry points. `make test` installs what it
# needs (Debian packages, pinned Go tools) idempotently.
SHELL := /bin/bash
.SHELLFLAGS := -o pipefail -c
GO ?= go
BIN := $(CURDIR)/bin
TOOLS := $(CURDIR)/.cache/tools
PROTOC_GEN_GO_VERSION := v1.36.12
PROTOC_GEN_GO_GRPC_VERSION := v1.6.0
BINARIES := edgewire-coordinator edgewire-agent edgewire-relay edgewire

.PHONY: all build test unit e2e demo bench proto deps kube helm cni manifests fmt vet clean release check-deploy

# VERSION is stamped into every binary (`version`, edgewire_build_info):
# the nearest tag and the commits since, or the commit without a tag.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
REVISION ?= $(shell git rev-parse HEAD 2>/dev/null)
DIRTY ?= $(shell test -n "$$(git status --porcelain 2>/dev/null)" && echo true)
BUILDINFO := github.com/edgewire/edgewire/internal/buildinfo
LDFLAGS := -X $(BUILDINFO).Version=$(VERSION) -X $(BUILDINFO).Revision=$(REVISION) -X $(BUILDINFO).Dirty=$(DIRTY)

all: build

build:
	@mkdir -p $(BIN)
	CGO_ENABLED=0 $(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/ $(addprefix ./cmd/,$(BINARIES))

deps:
	@hack/install-deps.sh

# Static binaries of every command for linux/amd64, linux/arm64 and
# linux/arm (GOARM=7) into dist/, with SHA256SUMS; each checked with
# file(1) for its architecture. dist/ is git-ignored.
release: deps
	VERSION="$(VERSION)" REVISION="$(REVISION)" DIRTY="$(DIRTY)" BINARIES="$(BINARIES)" DIST="$(CURDIR)/dist" GO="$(GO)" hack/release.sh

proto:
	@hack/install-deps.sh protoc
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GO_GRPC_VERSION)
	PATH=$(TOOLS):$$PATH protoc -I api \
		--go_out=api --go_opt=paths=source_relative \
		--go-grpc_out=api --go-grpc_opt=paths=source_relative \
		api/edgewire.proto

vet:
	$(GO) vet ./...

fmt:
	gofmt -l -w $$(git ls-files '*.go' | grep -v '\.pb\.go$$')

unit:
	EDGEWIRE_TOOLS_REQUIRED=1 $(GO) test -race -count=1 $$($(GO) list ./... | grep -v /e2e)
	# The bench harness's own parsers (its tests and fuzz seeds, not TestBench).
	$(GO) test -race -count=1 -tags bench -run '^(TestScan|FuzzScan|TestParseTop|TestKindOf)' ./bench/

# A real kube-apiserver and etcd from the Go module proxy, cached in
# .cache/kube (the first build takes 10-15 minutes on 2 cores).
kube:
	hack/kube/build.sh

# The helm CLI (for the chart tests), built from the Go module proxy into
# .cache/tools.
helm:
	hack/helm/build.sh

# Regenerates deploy/kubernetes/edgewire.yaml from the chart.
manifests: helm
	deploy/render.sh

# cnitool (github.com/containernetworking/cni), for creating pods in the
# e2e tests as a container runtime does, into .cache/tools.
cni:
	hack/cni/build.sh

e2e: deps build kube helm cni
	EDGEWIRE_TOOLS_REQUIRED=1 EDGEWIRE_BIN=$(BIN) $(GO) test -count=1 -timeout 40m -p 1 ./e2e/...

# What deploy/ ships, checked as its consumers read it: the alert rules
# (promtool check rules, and the rules' unit tests) and the chart's values
# against values.schema.json (helm lint fails on a schema violation).
# e2e/deploy checks more (metric names, a values file the schema refuses).
check-deploy: deps helm
	promtool check rules deploy/monitoring/edgewire-alerts.yaml
	cd deploy/monitoring && promtool test rules edgewire-alerts_test.yaml
	$(TOOLS)/helm lint --strict deploy/helm/edgewire

test: deps vet check-deploy unit e2e

# Benchmarks (never part of make test): writes bench/results.md and
# bench/results.json. BENCH_REPS, BENCH_DURATION, BENCH_SCALE tune it.
bench: deps build
	EDGEWIRE_BIN=$(BIN) $(GO) test -tags bench -count=1 -timeout 60m -run '^TestBench$$' -v ./bench/ 2>&1 | tee bench/last-run.log | grep -E '^(=== RUN|--- |PASS|FAIL|ok)'

demo: deps build
	@EDGEWIRE_BIN=$(BIN) $(GO) test -count=1 -v -run "^TestDemo$$" ./e2e/ | grep -v -e "^=== RUN" -e "^--- PASS" -e "^PASS" -e "^ok "

clean:
	rm -rf $(BIN)
