# corral: every target installs what it needs (scripts/install-deps.sh
# installs only missing Debian packages). go-ceph needs -tags pacific on
# Debian 12 (Ceph 16): it is set once here for build, test, vet and bench.
export GOFLAGS := -tags=pacific
GO        ?= go
BIN       := $(CURDIR)/bin
TOOLS     := $(CURDIR)/.bin
BUF_VERSION            := v1.75.0
PROTOC_GEN_GO_VERSION  := v1.36.12
PROTOC_GEN_GRPC_VERSION := v1.6.0
TEST_TIMEOUT ?= 25m

.PHONY: all deps build test unit vet fmt lint proto demo demo-stop bench clean

all: build

deps:
	@sh scripts/install-deps.sh

build: deps
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/ ./cmd/...

vet:
	$(GO) vet ./...

# Fails listing the files gofmt would change.
fmt:
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt would change:"; echo "$$out"; exit 1; fi

# Every test, unit and real-component (libvirtd, Ceph, OVS in network
# namespaces), packages in parallel on this machine's cores.
test: deps fmt
	$(GO) vet ./...
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

# Fast unit tests only (no real components).
unit:
	$(GO) test -count=1 -short ./...

$(TOOLS)/buf:
	GOBIN=$(TOOLS) $(GO) install github.com/bufbuild/buf/cmd/buf@$(BUF_VERSION)
$(TOOLS)/protoc-gen-go:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/protobuf/cmd/protoc-gen-go@$(PROTOC_GEN_GO_VERSION)
$(TOOLS)/protoc-gen-go-grpc:
	GOBIN=$(TOOLS) $(GO) install google.golang.org/grpc/cmd/protoc-gen-go-grpc@$(PROTOC_GEN_GRPC_VERSION)

# Regenerate the committed Go code from proto/ with local plugins.
proto: $(TOOLS)/buf $(TOOLS)/protoc-gen-go $(TOOLS)/protoc-gen-go-grpc
	PATH=$(TOOLS):$$PATH $(TOOLS)/buf lint
	PATH=$(TOOLS):$$PATH $(TOOLS)/buf generate

# A real local cluster in network namespaces, left running.
demo: build
	@sh scripts/demo.sh start

demo-stop:
	@sh scripts/demo.sh stop

# Benchmarks (go test -bench): the scheduler and FSM, Raft in-process over
# its TLS transport (3000 writes per figure: latency, 64 proposers, fsync
# floor), and real-component figures (OVS/Linux bridge convergence, RBD
# clone vs copy) on a lab; then
# corral-bench's end-to-end figures (Raft writes over mTLS vs the fsync
# floor, VM create to ready, live migration, HA failover), each on its own
# lab. BENCH_FLAGS passes options, e.g. BENCH_FLAGS='-only raft -runs 3'.
bench: build
	$(GO) test -run '^$$' -bench . -benchtime 3x ./scheduler/ ./netbridge/
	$(GO) test -run '^$$' -bench 'Apply|Snapshot' -benchtime 3x ./raftstore/
	$(GO) test -run '^$$' -bench ClusterTLS -benchtime 3000x ./raftstore/
	$(GO) test -run '^$$' -bench . -benchtime 1x -timeout 30m ./storage/rbd/
	$(BIN)/corral-bench $(BENCH_FLAGS)

clean:
	rm -rf $(BIN)
