"""The kernel tests' scope fixtures (own cgroup + network namespace, cleanup also on failure;
tests/kernel/conftest.py) for a test elsewhere that runs the real daemon: fleet shipping, the
console's Live view. Loaded under its own module name: every test directory has a conftest.

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from kernelscope import kconf, kernel_ok, scope, leaves_nothing_behind  # noqa: F401  (fixtures)
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_NAME = "sg_kernel_conftest"
if _NAME in sys.modules:
    kconf = sys.modules[_NAME]
else:
    _spec = importlib.util.spec_from_file_location(_NAME, Path(__file__).resolve().parent / "kernel" / "conftest.py")
    kconf = importlib.util.module_from_spec(_spec)
    sys.modules[_NAME] = kconf   # (dataclasses look their module up there)
    _spec.loader.exec_module(kconf)

kernel_ok, scope, leaves_nothing_behind = kconf.kernel_ok, kconf.scope, kconf.leaves_nothing_behind
