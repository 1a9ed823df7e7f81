"""Optimizer service: owns the run's weights, seed schedule and update log."""
