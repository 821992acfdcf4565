"""Build hook: compile the BPF object from the C sources before packaging it."""
import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

BPF_DIR = Path(__file__).parent / "src" / "sockgate" / "kernel" / "bpf"


class BuildWithBPF(build_py):
    def run(self):
        subprocess.run(["make", "-C", str(BPF_DIR)], check=True)
        super().run()


setup(cmdclass={"build_py": BuildWithBPF})
