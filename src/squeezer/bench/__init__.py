"""Load generation and profiling (a later issue)."""
