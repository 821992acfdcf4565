"""Build hooks: compile the BPF object from its C sources before packaging it, and the
journal's C write path (sockgate.journal._append: libsqlite3 + libcrypto)."""
import subprocess
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

BPF_DIR = Path(__file__).parent / "src" / "sockgate" / "kernel" / "bpf"


class BuildWithBPF(build_py):
    def run(self):
        subprocess.run(["make", "-C", str(BPF_DIR)], check=True)
        super().run()


setup(
    cmdclass={"build_py": BuildWithBPF},
    ext_modules=[Extension(
        "sockgate.journal._append", ["src/sockgate/journal/_append.c"],
        libraries=["sqlite3", "crypto"], extra_compile_args=["-O2", "-Wall", "-Wno-unused-parameter"],
    )],
)
