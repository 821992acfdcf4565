# sockgate developer entry points. Quick start (as root on Debian 12):
#   make run    # install deps, build, enforce + journal with the embedded default policy
#   make test   # install deps, build, run the whole test suite
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
APT_PKGS := clang-16 llvm-16 libbpf-dev libbpf1 bpftool iproute2 nftables make \
            gcc python3-dev python3-venv libsqlite3-dev libssl-dev kmod \
            postgresql-15 chromium openssl
PYTEST_ARGS ?=

.PHONY: setup deps venv bpf ext run test test-lsm bench clean

setup: deps venv bpf ext

deps:
	@missing=""; for p in $(APT_PKGS); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "apt-get install$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

venv: $(BIN)/sockgate

$(BIN)/sockgate: pyproject.toml setup.py
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[test]'
	touch $@

bpf:
	$(MAKE) -C src/sockgate/kernel/bpf

# the journal's C write path (src/sockgate/journal/_append.c), built in place
ext: build/ext.stamp

build/ext.stamp: src/sockgate/journal/_append.c setup.py | venv
	$(BIN)/python setup.py -q build_ext --inplace 2>&1 | grep -v -e BetaConfiguration -e FutureWarning -e "warn(" || true
	$(BIN)/python -c "import sockgate.journal._append"
	mkdir -p build && touch $@

run: setup
	$(BIN)/sockgate run

test: setup
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# The kernel suite on the BPF LSM backend, in Debian's stock kernel under QEMU (tests/vm).
test-lsm: setup
	mkdir -p build/vm
	tests/vm/run-in-vm.sh --timeout 2400 --share $(CURDIR)/build/vm \
	  --env SOCKGATE_DIFF_TUPLES=3000 -- \
	  $(BIN)/python -m pytest tests/kernel --backend lsm -q -p no:cacheprovider --junitxml=build/vm/junit.xml

clean:
	$(MAKE) -C src/sockgate/kernel/bpf clean
	rm -rf $(VENV) build *.egg-info
