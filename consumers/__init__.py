"""Kafka consumers: one module per domain, each a router of thin handlers."""
