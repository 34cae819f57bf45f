"""Utilities shared by scripts, tests and the demo."""
