"""The package version (one place; the CLI and results read it from here)."""

__version__ = "0.2.0"
