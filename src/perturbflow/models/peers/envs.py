"""Peer environments: each peer in a virtual environment of its own, ``.venv-peers/NAME``.

Peers pin what perturbflow cannot share (CellFlow: ``scikit-learn==1.5.1``, ``scipy<1.16``), so
``perturbflow peers install NAME`` makes a separate environment with the peer's pins, CPU builds
only: JAX's CPU wheels for CellFlow; for a peer that needs torch, the CPU wheel of
``$PERTURBFLOW_TORCH_SPEC`` (default ``torch==2.13.0``, the Makefile's) installed first and held
by a constraint file, and the install refused if torchvision or an ``nvidia-*`` CUDA package came
in anyway. The main process talks to a peer only through files: it runs the peer's adapter script
(``adapters/<peer>_adapter.py``, which imports the peer's packages and numpy/pandas/anndata only)
with the environment's Python (:func:`run_adapter`).

Where: ``$PERTURBFLOW_PEERS_DIR``, else ``.venv-peers`` next to the running virtual environment
(``/repo/.venv`` → ``/repo/.venv-peers``), else in the working directory.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import subprocess
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

logger = logging.getLogger(__name__)

PEERS_DIR_ENV = "PERTURBFLOW_PEERS_DIR"
TORCH_SPEC_ENV = "PERTURBFLOW_TORCH_SPEC"
DEFAULT_TORCH_SPEC = "torch==2.13.0"
ADAPTERS = Path(__file__).parent / "adapters"
# Distributions a CPU-only peer environment must never hold.
FORBIDDEN = re.compile(r"^(torchvision|nvidia[-_].*|jax[-_]cuda.*|jax[-_]plugins?)$", re.I)
_LOG_TAIL_LINES = 25


class PeerNotInstalledError(ImportError):
    """An optional peer model's package or environment is not installed."""


class PeerEnvError(PeerNotInstalledError):
    """A peer environment is missing or broken; the message names the command that makes it."""


class PeerRunError(RuntimeError):
    """A peer's adapter failed in its environment; the message holds the end of its log."""


class PeerCannotPredictError(KeyError):
    """A peer has no prediction for a requested condition: a gene outside what it models (GEARS's
    GO graph) or a condition it skipped. A benchmark records it as that peer's failure."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


# What `run` records as a peer's failure for a seed before it goes on with the other models.
PEER_FAILURES = (PeerNotInstalledError, PeerRunError, PeerCannotPredictError)


@dataclasses.dataclass(frozen=True)
class PeerEnvSpec:
    """What a peer environment holds: ``requirements`` (pip specifiers, pinned), whether torch
    goes in first, the ``distribution`` whose version names the peer, the module whose import
    proves the environment works, and the adapter script run in it."""

    name: str
    distribution: str
    requirements: tuple[str, ...]
    import_check: str
    adapter: str
    needs_torch: bool = False


PEER_ENVS: dict[str, PeerEnvSpec] = {
    "cellflow": PeerEnvSpec(
        name="cellflow",
        distribution="cellflow-tools",
        # jax without extras is the CPU build; cellflow imports requests unconditionally.
        requirements=("cellflow-tools==0.0.9", "jax==0.10.2", "jaxlib==0.10.2", "requests"),
        import_check="cellflow.model",
        adapter="cellflow_adapter.py",
    ),
    "gears": PeerEnvSpec(
        name="gears",
        distribution="cell-gears",
        requirements=("cell-gears==0.1.2", "torch-geometric==2.8.1"),
        import_check="gears",
        adapter="gears_adapter.py",
        needs_torch=True,
    ),
}


def install_hint(name: str) -> str:
    return f"perturbflow peers install {name}"


def peers_dir() -> Path:
    """The folder holding the peer environments (see the module docstring)."""
    if os.environ.get(PEERS_DIR_ENV):
        return Path(os.environ[PEERS_DIR_ENV]).expanduser()
    if sys.prefix != sys.base_prefix:  # running inside a virtual environment
        return Path(sys.prefix).parent / ".venv-peers"
    return Path.cwd() / ".venv-peers"


def env_dir(name: str) -> Path:
    return peers_dir() / _spec(name).name


def env_python(name: str) -> Path:
    return env_dir(name) / "bin" / "python"


def _spec(name: str) -> PeerEnvSpec:
    if name not in PEER_ENVS:
        raise KeyError(f"unknown peer {name!r}; peers with environments: {', '.join(PEER_ENVS)}")
    return PEER_ENVS[name]


@dataclasses.dataclass(frozen=True)
class EnvStatus:
    """A peer environment as found on disk (no process is started to find it)."""

    name: str
    path: Path
    exists: bool
    version: str | None

    @property
    def ready(self) -> bool:
        return self.exists and self.version is not None


def installed_version(name: str) -> str | None:
    """Version of the peer's distribution in its environment, read from its ``.dist-info``."""
    stem = re.sub(r"[-_.]+", "_", _spec(name).distribution).lower()
    for info in sorted(env_dir(name).glob("lib/python*/site-packages/*.dist-info")):
        dist, _, rest = info.name[: -len(".dist-info")].partition("-")
        if dist.lower() == stem and rest:
            return rest
    return None


def env_status(name: str) -> EnvStatus:
    path = env_dir(name)
    exists = env_python(name).exists()
    return EnvStatus(name, path, exists, installed_version(name) if exists else None)


def require_env(name: str) -> Path:
    """The Python of peer ``name``'s environment; :class:`PeerEnvError` naming the install
    command when it is missing or lacks the peer's package."""
    status = env_status(name)
    if not status.exists:
        raise PeerEnvError(
            f"the {name} peer runs in its own environment, and {status.path} has none "
            f"(no bin/python); create it with `{install_hint(name)}` (set {PEERS_DIR_ENV} to "
            "use another folder)"
        )
    if status.version is None:
        raise PeerEnvError(
            f"the {name} peer environment {status.path} lacks {_spec(name).distribution}; "
            f"it is broken or half-installed: remake it with `{install_hint(name)}`"
        )
    return env_python(name)


# -- installing ----------------------------------------------------------------------------------


def torch_spec() -> str:
    return os.environ.get(TORCH_SPEC_ENV) or DEFAULT_TORCH_SPEC


def install_steps(name: str, *, python: str | Path | None = None) -> list[list[str]]:
    """The commands that make peer ``name``'s environment, in order (nothing is run here).

    ``python`` makes the virtual environment (default: this interpreter). Torch, when the peer
    needs it, is installed alone first and then held by ``constraints.txt`` in the environment,
    which :func:`install_env` writes before the last step.
    """
    spec = _spec(name)
    target = env_dir(name)
    pip = [str(target / "bin" / "python"), "-m", "pip", "install", "--quiet"]
    steps = [[str(python or sys.executable), "-m", "venv", "--clear", str(target)]]
    if spec.needs_torch:
        steps.append([*pip, torch_spec()])
        steps.append([*pip, "-c", str(target / "constraints.txt"), *spec.requirements])
    else:
        steps.append([*pip, *spec.requirements])
    return steps


Runner = Callable[[Sequence[str]], subprocess.CompletedProcess]


def _run_step(command: Sequence[str]) -> subprocess.CompletedProcess:
    return subprocess.run(list(command), capture_output=True, text=True, check=False)


def install_env(
    name: str,
    *,
    python: str | Path | None = None,
    runner: Runner = _run_step,
    progress: Callable[[str], None] | None = None,
) -> EnvStatus:
    """Make (or remake) peer ``name``'s environment and check it; returns its status.

    Raises :class:`PeerEnvError` when a step fails (with the end of its output), when a CUDA
    build or torchvision was pulled in, or when the peer's module does not import.
    """
    spec = _spec(name)
    for index, step in enumerate(install_steps(name, python=python)):
        if index == 1 and spec.needs_torch:  # the environment exists; torch's pin holds from here
            env_dir(name).mkdir(parents=True, exist_ok=True)
            (env_dir(name) / "constraints.txt").write_text(torch_spec() + "\n")
        if progress is not None:
            progress(" ".join(step))
        done = runner(step)
        if done.returncode != 0:
            raise PeerEnvError(
                f"installing the {name} peer failed at `{' '.join(step)}` (exit "
                f"{done.returncode}):\n{_tail(done.stdout + done.stderr)}"
            )
    listed = runner([str(env_python(name)), "-m", "pip", "list", "--format=freeze"])
    pulled = [
        line.split("==")[0]
        for line in listed.stdout.splitlines()
        if FORBIDDEN.match(line.split("==")[0])
    ]
    if pulled:
        raise PeerEnvError(
            f"the {name} peer environment {env_dir(name)} received GPU builds or torchvision "
            f"({', '.join(pulled)}), which a CPU-only peer must not hold; remove the folder and "
            f"report the dependency that pulled them"
        )
    check = runner([str(env_python(name)), "-c", f"import {spec.import_check}"])
    if check.returncode != 0:
        raise PeerEnvError(
            f"the {name} peer environment was made but `import {spec.import_check}` fails:\n"
            f"{_tail(check.stdout + check.stderr)}"
        )
    return env_status(name)


# -- running an adapter --------------------------------------------------------------------------


def adapter_env() -> dict[str, str]:
    """The environment of an adapter process: offline, CPU, no Python settings of this process."""
    env = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith(("PYTHON", "VIRTUAL_ENV"))
    }
    env.update(
        JAX_PLATFORMS="cpu",
        CUDA_VISIBLE_DEVICES="",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        MPLBACKEND="Agg",
    )
    if env.get("OMP_NUM_THREADS") == "1":  # XLA ignores OMP_NUM_THREADS
        env["XLA_FLAGS"] = (
            env.get("XLA_FLAGS", "")
            + " --xla_cpu_multi_thread_eigen=false intra_op_parallelism_threads=1"
        ).strip()
    return env


def run_adapter(name: str, work_dir: Path, *, timeout_s: float | None = None) -> Path:
    """Run peer ``name``'s adapter on ``work_dir`` in its environment; returns its log file.

    The adapter's output goes to ``work_dir/adapter.log`` (and this module's logger at DEBUG).
    Raises :class:`PeerEnvError` for a missing environment and :class:`PeerRunError` when the
    adapter fails or runs past ``timeout_s``.
    """
    python = require_env(name)
    command = [str(python), "-I", str(ADAPTERS / _spec(name).adapter), str(work_dir)]
    log = work_dir / "adapter.log"
    logger.info("%s peer: running %s", name, " ".join(command))
    with open(log, "w") as stream:
        try:
            done = subprocess.run(
                command,
                stdout=stream,
                stderr=subprocess.STDOUT,
                cwd=work_dir,  # a peer that writes ./data (GEARS) writes it there
                env=adapter_env(),
                timeout=timeout_s,
                check=False,
            )
        except subprocess.TimeoutExpired as error:
            raise PeerRunError(
                f"the {name} peer ran past its {timeout_s:g} s limit (its log: {log})"
            ) from error
    text = log.read_text(errors="replace")
    for line in text.splitlines():
        logger.debug("%s peer: %s", name, line)
    if done.returncode != 0:
        hint = (
            f"; if it fails to import its packages, remake it with `{install_hint(name)}`"
            if "ModuleNotFoundError" in text or "ImportError" in text
            else ""
        )
        raise PeerRunError(
            f"the {name} peer failed in {env_dir(name)} (exit {done.returncode}){hint}:\n"
            f"{_tail(text)}"
        )
    return log


def _tail(text: str) -> str:
    return "\n".join(text.strip().splitlines()[-_LOG_TAIL_LINES:])
