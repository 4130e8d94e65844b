"""rotatord: automatic TLS certificate and private-key rotation daemon."""

__version__ = "0.1.0"
