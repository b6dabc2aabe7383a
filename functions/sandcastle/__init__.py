"""Sandcastle: run code-writing AI agents safely on AWS serverless."""

__version__ = "0.1.0"
