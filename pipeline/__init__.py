"""Offline image-captioning pipeline: library code (no argv, no global state)."""
