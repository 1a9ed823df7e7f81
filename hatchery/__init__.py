"""Hatchery: fine-tune language models with evolution strategies (EGGROLL)."""

__version__ = "0.1.0"
