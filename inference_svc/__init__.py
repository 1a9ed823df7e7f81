"""Inference service: a worker that evaluates low-rank perturbed populations."""
