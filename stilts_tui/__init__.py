"""stilts-tui: a keyboard-driven terminal experiment manager for STILTs studies."""

__version__ = "0.1.0"
