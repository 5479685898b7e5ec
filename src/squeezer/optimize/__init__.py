"""Optimized runtimes and the accuracy-gated search (a later issue)."""
