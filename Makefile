# tpm-fido build, test and demo entry points.
PREFIX ?= /usr/local
DESTDIR ?=
# Go: the one on PATH, else the official tarball's place (README, "Go").
GO ?= $(firstword $(shell command -v go 2>/dev/null) /usr/local/go/bin/go)
# Go's own directory and $GOPATH/bin (where `go install` puts staticcheck)
# go on PATH for the recipes and for the tests, which run go themselves.
export PATH := $(patsubst %/,%,$(dir $(GO))):$(PATH):$(shell $(GO) env GOPATH 2>/dev/null)/bin
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
STATICCHECK_VERSION = v0.8.2
FUZZTIME ?= 60s
# test/interop is real libfido2 through cgo. Without libfido2-dev it is
# built with -tags nolibfido2 and its test skips, saying so. Expanded when
# a recipe runs, so after `deps` has installed it.
GOTAGS = $(shell pkg-config --exists libfido2 2>/dev/null || echo -tags nolibfido2)
# When set, VM boots take this lock (flock), so that runs sharing a
# machine boot one VM at a time.
TPM_FIDO_VM_LOCK ?=

.PHONY: all build install deps test check lint unit fuzz e2e demo clean need-go

all: build

# The release binary: static, no cgo (the TPM simulator is left out).
build: need-go
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o bin/tpm-fido ./cmd/tpm-fido

# Installs what `make build` built; it never builds (sudo's PATH usually
# has no Go).
install:
	@test -x bin/tpm-fido || { echo "bin/tpm-fido does not exist: run 'make build' first (as yourself, without sudo)" >&2; exit 1; }
	install -D -m 0755 bin/tpm-fido $(DESTDIR)$(PREFIX)/bin/tpm-fido
	install -D -m 0644 docs/tpm-fido.1 $(DESTDIR)$(PREFIX)/share/man/man1/tpm-fido.1

# The Debian packages the tests need (scripts/packages.txt), installed
# when missing: as root with apt-get, else through sudo.
deps:
	@scripts/deps.sh test

# Everything CI runs: the packages, then lint, unit and interop tests
# with the race detector, every fuzz target for FUZZTIME, then the VM
# end-to-end test.
test: deps
	@start=$$(date +%s); for stage in lint unit fuzz e2e; do s=$$(date +%s); \
		$(MAKE) --no-print-directory $$stage || exit 1; \
		echo "== $$stage passed in $$(( $$(date +%s) - s ))s"; done; \
		echo "== make test passed in $$(( $$(date +%s) - start ))s"

# The everyday check: lint and the unit tests (no fuzzing, no VM).
check: lint unit

need-go:
	@command -v $(GO) >/dev/null 2>&1 || { echo "Go is not installed (looked on PATH and in /usr/local/go/bin): see README.md, \"Go\"" >&2; exit 1; }
	@v=$$($(GO) version | awk '{print $$3}'); case $$v in go1.[0-9].* | go1.1[0-9].* | go1.20.*) \
		echo "$(GO) is $$v; tpm-fido needs the Go that go.mod names (Debian's golang-go is too old): see README.md, \"Go\"" >&2; exit 1;; esac

lint: need-go
	@echo "== gofmt"; out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "$$out"; exit 1; fi
	@echo "== go vet"; $(GO) vet $(GOTAGS) ./...
	@echo "== staticcheck"; command -v staticcheck >/dev/null || GOFLAGS= $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION); staticcheck $(GOTAGS) ./...

unit: need-go
	@echo "== go test -race (all but the VM test)$(if $(GOTAGS), (no libfido2-dev: test/interop skips))"
	$(GO) test -race -count=1 $(GOTAGS) $$($(GO) list ./... | grep -v '/test/e2e$$')

fuzz: need-go
	@echo "== fuzz ($(FUZZTIME) per target)"
	FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

# TPM_FIDO_E2E=require: a VM test that cannot run fails instead of skipping.
e2e: need-go
	@echo "== VM end-to-end"
	TPM_FIDO_E2E=require $(if $(TPM_FIDO_VM_LOCK),flock $(TPM_FIDO_VM_LOCK)) $(GO) test -count=1 -v -timeout 25m ./test/e2e/

demo:
	./test/e2e/demo.sh

clean:
	rm -rf bin
