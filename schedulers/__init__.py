"""The scheduler service: emits scheduler.tick events for periodic jobs."""
