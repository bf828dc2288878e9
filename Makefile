# mimg: build, test and benchmark. `make test` installs what it needs.

CARGO ?= cargo
MIMG  := target/release/mimg
RECIPE ?= minimal

# Host tools (scripts/deps says which and why): bubblewrap (and uidmap,
# rootless) runs the sandbox the tools environment works in; QEMU and OVMF
# boot images; the rest is for tests (mmdebstrap makes a second host root,
# fdisk and e2fsprogs check images) and for locking (apt, gpgv, pip).
.PHONY: deps build test test-unit test-integration image bench clean

deps:
	bash scripts/deps

build: deps
	$(CARGO) build --release --locked

test: build
	CARGO=$(CARGO) bash scripts/test

test-unit:
	$(CARGO) test --release --locked --bins

image: build
	$(MIMG) build $(RECIPE)

bench: build
	python3 bench/run.py

clean:
	$(CARGO) clean
	rm -rf images
