"""Sidemeter core: config, usage records, wire parsing, store, runtime and CLI."""

__version__ = "0.1.0"
