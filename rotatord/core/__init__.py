"""Pure core: data model, errors, renewal policy and key handling.

Rules: nothing under ``core`` performs file or network I/O, reads the clock, or imports any other
part of rotatord or the acme/josepy libraries. Everything here is deterministic given its inputs
(key generation draws from the OS RNG, which is the one exception by nature).
"""
