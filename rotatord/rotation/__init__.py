"""The rotation story and everything it keeps: see ``rotator`` for the batch, ``issue`` for the
gated order, ``deploy`` for outputs/reloads/probe (and rollback), ``journal`` for resumable
phases, ``book`` for status and budgets, ``recovery``, ``revoke`` and ``view``."""

from rotatord.rotation.deploy import reload_env
from rotatord.rotation.installed import read_installed, service_store
from rotatord.rotation.recovery import recover_service, recover_state, resume, unfinished
from rotatord.rotation.revoke import REVOCATION_REASONS
from rotatord.rotation.rotator import Rotator, ShuttingDown
from rotatord.rotation.state import Installed, Outcome, Phase, RotationResult
from rotatord.rotation.view import service_status

__all__ = [
    "REVOCATION_REASONS",
    "Installed",
    "Outcome",
    "Phase",
    "RotationResult",
    "Rotator",
    "ShuttingDown",
    "read_installed",
    "recover_service",
    "recover_state",
    "reload_env",
    "resume",
    "service_status",
    "service_store",
    "unfinished",
]
