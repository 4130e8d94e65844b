"""Run a private Pebble ACME test server on loopback for tests, benchmarks and manual checks."""

from pebble.runner import (
    PebbleFactory,
    PebbleOptions,
    PebbleServer,
    PebbleUnavailable,
    pebble_available,
    roots_url_for,
)

__all__ = [
    "PebbleFactory",
    "PebbleOptions",
    "PebbleServer",
    "PebbleUnavailable",
    "pebble_available",
    "roots_url_for",
]

from pebble.ari_proxy import AriProxy, ReplacesMode, cert_id

__all__ += ["AriProxy", "ReplacesMode", "cert_id"]
