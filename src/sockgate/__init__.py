"""sockgate: kernel-enforced socket exit points with a sealed audit journal."""

__version__ = "0.1.0"
