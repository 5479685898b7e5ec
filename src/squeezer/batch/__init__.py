"""Offline batch inference: ``squeezer batch`` over files, resumable (``job``)."""
