"""Qwen-Image-Edit job-queue API on Ray Serve."""

__version__ = "0.2.0"
