"""Sweeps: one spec, many runs through the same executors."""
