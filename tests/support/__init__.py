"""Helpers the tests share: paths, the running sidecar, crafted flows, recorded wire transcripts."""
