# mimg: build, test and benchmark. `make test` installs what it needs.

CARGO ?= cargo
MIMG  := target/release/mimg
RECIPE ?= minimal

# Host tools: mmdebstrap bootstraps the tools environment; bubblewrap runs
# it; QEMU and OVMF boot images in tests; the rest checks images.
APT_PACKAGES := mmdebstrap bubblewrap uidmap debian-archive-keyring \
	qemu-system-x86 qemu-utils ovmf fdisk e2fsprogs dosfstools mtools \
	passwd util-linux ca-certificates curl build-essential pkg-config \
	python3 python3-pip tar iproute2 apt gpgv gpg dpkg-dev

.PHONY: deps build test test-unit test-integration image bench clean

deps:
	@missing=$$(for p in $(APT_PACKAGES); do dpkg-query -W -f='$${Status}\n' $$p 2>/dev/null | grep -q '^install ok installed' || echo $$p; done); \
	if [ -n "$$missing" ]; then \
		echo "installing:$$missing"; \
		if [ "$$(id -u)" = 0 ]; then SUDO=; else SUDO=sudo; fi; \
		$$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi
	@command -v $(CARGO) >/dev/null || { \
		echo "installing the Rust toolchain from Debian"; \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -qq cargo rustc; }

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
