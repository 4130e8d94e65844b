"""The certificate store: the port (``store.port``) and its filesystem implementation."""

from rotatord.store.fs import (
    CERT_FILE,
    CHAIN_FILE,
    DIR_MODE,
    FULLCHAIN_FILE,
    KEY_FILE,
    META_FILE,
    PUBLIC_MODE,
    VERSION_FILES,
    VERSION_RE,
    ServiceStore,
    meta_from_json,
    meta_to_json,
)
from rotatord.store.port import Bundle, CertStore, RecoveryReport, ServiceStatus, Version

__all__ = [
    "CERT_FILE",
    "CHAIN_FILE",
    "DIR_MODE",
    "FULLCHAIN_FILE",
    "KEY_FILE",
    "META_FILE",
    "PUBLIC_MODE",
    "VERSION_FILES",
    "VERSION_RE",
    "Bundle",
    "CertStore",
    "RecoveryReport",
    "ServiceStatus",
    "ServiceStore",
    "Version",
    "meta_from_json",
    "meta_to_json",
]
