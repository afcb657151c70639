# tpm-fido build, test and demo entry points.
PREFIX ?= /usr/local
DESTDIR ?=
GO ?= go
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
STATICCHECK_VERSION = v0.8.2
FUZZTIME ?= 60s

.PHONY: all build install test lint unit fuzz e2e demo clean

all: build

# The release binary: static, no cgo (the TPM simulator is left out).
build:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-X main.version=$(VERSION)" -o bin/tpm-fido ./cmd/tpm-fido

install: build
	install -D -m 0755 bin/tpm-fido $(DESTDIR)$(PREFIX)/bin/tpm-fido
	install -D -m 0644 docs/tpm-fido.1 $(DESTDIR)$(PREFIX)/share/man/man1/tpm-fido.1

# Everything CI runs: lint, unit and interop tests with the race detector,
# every fuzz target for FUZZTIME, then the VM end-to-end test.
test: lint unit fuzz e2e

lint:
	@echo "== gofmt"; out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "$$out"; exit 1; fi
	@echo "== go vet"; $(GO) vet ./...
	@echo "== staticcheck"; command -v staticcheck >/dev/null || GOFLAGS= $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION); staticcheck ./...

unit:
	@echo "== go test -race (all but the VM test)"
	$(GO) test -race -count=1 $$($(GO) list ./... | grep -v /test/e2e)

fuzz:
	@echo "== fuzz ($(FUZZTIME) per target)"
	FUZZTIME=$(FUZZTIME) ./scripts/fuzz.sh

e2e:
	@echo "== VM end-to-end"
	$(GO) test -count=1 -v -timeout 15m ./test/e2e/

demo:
	./test/e2e/demo.sh

clean:
	rm -rf bin
