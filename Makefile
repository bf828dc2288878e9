# mimg: build, test and benchmark. `make test` installs what it needs.

CARGO ?= cargo
MIMG  := target/release/mimg
RECIPE ?= minimal

# Host tools (scripts/deps says which and why): mmdebstrap installs the
# rootfs; bubblewrap runs the tools environment; QEMU and OVMF boot images in
# tests; the rest checks images.
.PHONY: deps build test test-unit test-integration image bench clean

deps:
	bash scripts/deps

build: deps
	$(CARGO) build --release --locked

test: build
	$(CARGO) test --release --locked -- --test-threads=1

test-unit:
	$(CARGO) test --release --locked --bins

image: build
	$(MIMG) build $(RECIPE)

bench: build
	python3 bench/run.py

clean:
	$(CARGO) clean
	rm -rf images
