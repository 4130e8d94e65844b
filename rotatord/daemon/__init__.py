"""The daemon: composition (``compose``), planning (``planner``), the service loop (``loop``),
control verbs (``verbs``), process lifecycle (``lifecycle``) and ``rotatord run`` (``main``)."""

from rotatord.daemon.compose import IssuerCache, build_rotator
from rotatord.daemon.lifecycle import DaemonLock
from rotatord.daemon.main import Daemon
from rotatord.daemon.planner import Plan, Planner

__all__ = ["Daemon", "DaemonLock", "IssuerCache", "Plan", "Planner", "build_rotator"]
