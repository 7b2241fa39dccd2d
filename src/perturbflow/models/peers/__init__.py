"""Peer models from other packages behind perturbflow's model interface.

A peer runs either in-process, when its package is installed here (GEARS: extra ``peers``), or
in an environment of its own made by ``perturbflow peers install NAME`` (CellFlow, GEARS; see
:mod:`perturbflow.models.peers.envs`). A peer is registered only when one of the two exists, so
``--models all`` never fails for a missing optional dependency; naming a missing peer raises an
error saying what to install. GEARS prefers the in-process path when cell-gears is installed here.
"""

from perturbflow.models.base import MODELS, register_model
from perturbflow.models.peers import gears as _gears
from perturbflow.models.peers.cellflow import CellFlowConfig, CellFlowModel
from perturbflow.models.peers.envs import (
    PEER_ENVS,
    PEER_FAILURES,
    PeerCannotPredictError,
    PeerEnvError,
    PeerNotInstalledError,
    PeerRunError,
    env_status,
    install_hint,
)
from perturbflow.models.peers.external import EnvPeerModel, PeerConditionError
from perturbflow.models.peers.gears import (
    GearsConfig,
    GearsModel,
    GoTableNotFoundError,
    UnknownPerturbationError,
    gears_available,
)
from perturbflow.models.peers.gears_env import GearsEnvModel

PEERS = ("cellflow", "gears")


def register_peers() -> tuple[str, ...]:
    """Register every available peer not registered yet; returns the names now registered."""
    if "gears" not in MODELS:
        if _gears.gears_available():
            register_model("gears")(GearsModel)
        elif env_status("gears").exists:
            register_model("gears")(GearsEnvModel)
    if "cellflow" not in MODELS and env_status("cellflow").exists:
        register_model("cellflow")(CellFlowModel)
    return tuple(name for name in PEERS if name in MODELS)


def missing_peer_hint(name: str) -> str:
    """How to make peer ``name`` available."""
    if name == "gears":
        return f"pip install 'perturbflow[peers]' (in-process) or `{install_hint('gears')}`"
    return f"`{install_hint(name)}`"


def peer_status() -> dict[str, tuple[bool, str]]:
    """Peer model name → (available, a line saying how it runs or how to install it)."""
    status = {}
    for name in PEERS:
        env = env_status(name)
        if name == "gears" and _gears.gears_available():
            status[name] = (True, "installed in-process (cell-gears)")
        elif env.ready:
            status[name] = (
                True,
                f"environment {env.path} ({PEER_ENVS[name].distribution} {env.version})",
            )
        elif env.exists:
            status[name] = (False, f"environment {env.path} is broken: {missing_peer_hint(name)}")
        else:
            status[name] = (False, f"not installed ({missing_peer_hint(name)})")
    return status


register_peers()

__all__ = [
    "PEERS",
    "PEER_FAILURES",
    "PeerCannotPredictError",
    "CellFlowConfig",
    "CellFlowModel",
    "EnvPeerModel",
    "GearsConfig",
    "GearsEnvModel",
    "GearsModel",
    "GoTableNotFoundError",
    "PeerConditionError",
    "PeerEnvError",
    "PeerNotInstalledError",
    "PeerRunError",
    "UnknownPerturbationError",
    "gears_available",
    "missing_peer_hint",
    "peer_status",
    "register_peers",
]
