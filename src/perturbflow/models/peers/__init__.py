"""Peer models from other packages behind perturbflow's model interface (extra ``peers``).

A peer is registered only when its package is installed, so ``--models all`` never fails for a
missing optional dependency; constructing one without its package raises
:class:`PeerNotInstalledError` saying what to install.
"""

from perturbflow.models.base import MODELS, register_model
from perturbflow.models.peers import gears as _gears
from perturbflow.models.peers.gears import (
    GearsConfig,
    GearsModel,
    GoTableNotFoundError,
    PeerNotInstalledError,
    UnknownPerturbationError,
    gears_available,
)

PEERS = ("gears",)


def register_peers() -> tuple[str, ...]:
    """Register every installed peer not registered yet; returns the names now registered."""
    if _gears.gears_available() and "gears" not in MODELS:
        register_model("gears")(GearsModel)
    return tuple(name for name in PEERS if name in MODELS)


def peer_status() -> dict[str, tuple[bool, str]]:
    """Peer model name → (installed, a line saying so or how to install it), for reports."""
    installed = _gears.gears_available()
    return {
        "gears": (
            installed,
            "installed (cell-gears)" if installed else f"not installed ({_gears.INSTALL_HINT})",
        )
    }


register_peers()

__all__ = [
    "PEERS",
    "GearsConfig",
    "GearsModel",
    "GoTableNotFoundError",
    "PeerNotInstalledError",
    "UnknownPerturbationError",
    "gears_available",
    "peer_status",
    "register_peers",
]
