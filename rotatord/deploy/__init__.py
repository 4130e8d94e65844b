"""Deployment adapters: reload actions, per-consumer outputs, live TLS probes."""
