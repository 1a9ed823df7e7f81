"""Reward service: scores completions over gRPC (hatchery.v1.RewardService)."""
