"""The run's core: config, tasks, model loading and generation, stop rules, the update
log, checkpoints and the metrics log. Imports nothing of the project but hatchery.es."""
