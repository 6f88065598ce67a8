"""Workspace assets shared by every package's tests (not a distributed package)."""
