"""Suite-wide options. `--backend lsm|cgroup|auto` picks the kernel backend the kernel tests
load (same as SOCKGATE_BACKEND; the guest run in tests/vm uses it)."""

import os


def pytest_addoption(parser):
    parser.addoption("--backend", choices=("auto", "lsm", "cgroup"), default=None,
                     help="kernel backend for tests/kernel (default: $SOCKGATE_BACKEND or auto)")


def pytest_configure(config):
    backend = config.getoption("--backend")
    if backend:
        os.environ["SOCKGATE_BACKEND"] = backend  # read by tests/kernel/conftest.py at import
