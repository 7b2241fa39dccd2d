"""Suite-wide fixtures: isolated caches, one thread everywhere, simulated screens, a local HTTP server.

Shared fixtures (use them instead of copying the set-up into a test file):

``simulated_screen(preset="tiny", **overrides)``
    Session-scoped factory of simulated screens (:func:`perturbflow.data.synthetic.simulate`),
    cached per settings and returned as a fresh copy; presets in ``SCREENS``.
``screen_data(preset="tiny", split="simulation", split_seed=0, **overrides)``
    The same screen read into a ``PerturbationDataset`` with its ``Split``.
``http_server(handler=None, *, directory=None, **attributes)``
    Factory of threaded HTTP servers on 127.0.0.1 (free port), shut down after the test; returns
    ``(base_url, server)``. ``directory`` serves a folder as static files; ``attributes`` are set
    on the server before it starts (handlers read them as ``self.server.<name>``).
"""

from __future__ import annotations

import functools
import os
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

# Property tests draw the same examples on every run (CI stays deterministic); the examples they
# once found are pinned with @example. HYPOTHESIS_PROFILE=explore searches afresh.
settings.register_profile("perturbflow", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "perturbflow"))

# The model tests' helper modules (``_configs``: small model configs) serve other folders too
# (tests/programs/test_resolver.py); importable however the run is started, not only after
# tests/models was collected.
sys.path.insert(0, str(Path(__file__).parent / "models"))

# --- one thread -------------------------------------------------------------------------------

# NUMBA: numba's OpenMP layer (imported by dcor, which cell-gears imports) resets the OpenMP
# thread count that torch shares to all cores unless it is told otherwise.
THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMBA_NUM_THREADS",
)


def pytest_configure(config: pytest.Config) -> None:
    """Libraries (and subprocesses) that start after this point default to one thread.

    The tests' models and matrices are tiny: extra threads only fight over the shared cores (a
    scbig fit took 23 s instead of 2 s on a busy machine). A variable the caller set is kept.
    """
    for name in THREAD_VARIABLES:
        os.environ.setdefault(name, "1")
    # Peer environments made on this machine (.venv-peers) would register peers at import; the
    # tests see none (a folder never made) unless a test sets up its own.
    os.environ["PERTURBFLOW_PEERS_DIR"] = str(Path(tempfile.gettempdir()) / "perturbflow-no-peers")


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """One torch thread before every test's set-up, so fixtures of every scope (a module's shared
    fitted model too) run on one thread, even after a test imported a library that changed it."""
    torch = sys.modules.get("torch")  # not imported here for tests that do not use it
    if torch is not None and torch.get_num_threads() != 1:
        torch.set_num_threads(1)


@pytest.fixture(scope="session", autouse=True)
def one_thread() -> Iterator[None]:
    """One thread in the BLAS and OpenMP libraries already loaded, for the whole run."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


# --- caches -----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path_factory, monkeypatch):
    """Downloads and embedding caches go to a temporary folder, never the user's cache."""
    monkeypatch.setenv("PERTURBFLOW_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))


# --- simulated screens ------------------------------------------------------------------------

SCREENS: dict[str, dict[str, Any]] = {
    # 40 genes, 8 measured singles, 8 doubles: small enough for a scbig fit in a fraction of a
    # second, large enough for every split subgroup.
    "tiny": dict(
        n_genes=40,
        n_programs=4,
        n_perturbed=8,
        n_unmeasured=0,
        n_doubles=8,
        n_control_cells=200,
        n_cells_per_condition=30,
        seed=0,
    ),
    # The simulator's own defaults (SyntheticConfig), seed 0.
    "default": dict(seed=0),
    # 60 genes, 10 measured singles plus one unmeasured target, 12 doubles.
    "small": dict(
        n_genes=60,
        n_programs=4,
        n_perturbed=10,
        n_unmeasured=1,
        n_doubles=12,
        n_control_cells=200,
        n_cells_per_condition=30,
        seed=0,
    ),
}


class ScreenFactory:
    """Simulated screens by preset and overrides, each simulated once and handed out as a copy."""

    def __init__(self) -> None:
        self._made: dict[str, Any] = {}

    @staticmethod
    def settings(preset: str = "tiny", **overrides: Any) -> dict[str, Any]:
        """The ``simulate`` keyword arguments of ``preset`` with ``overrides`` applied."""
        if preset not in SCREENS:
            raise KeyError(f"unknown screen preset {preset!r}; one of {sorted(SCREENS)}")
        return {**SCREENS[preset], **overrides}

    def __call__(self, preset: str = "tiny", **overrides: Any):
        from perturbflow.data.synthetic import simulate

        settings = self.settings(preset, **overrides)
        key = repr(sorted(settings.items()))
        if key not in self._made:
            self._made[key] = simulate(**settings)
        return self._made[key].copy()  # a test may change its copy freely


@pytest.fixture(scope="session")
def simulated_screen() -> ScreenFactory:
    """Factory ``(preset="tiny", **overrides) -> AnnData`` of simulated screens, made once per
    settings in the session; ``simulated_screen.settings(...)`` gives the settings themselves."""
    return ScreenFactory()


@pytest.fixture(scope="session")
def screen_data(simulated_screen) -> Callable[..., tuple[Any, Any]]:
    """Factory ``(preset="tiny", split="simulation", split_seed=0, **overrides)`` ->
    ``(PerturbationDataset, Split)`` of a simulated screen."""
    from perturbflow.data import read
    from perturbflow.data.splits import make_split

    def make(
        preset: str = "tiny", *, split: str = "simulation", split_seed: int = 0, **overrides: Any
    ):
        dataset = read(simulated_screen(preset, **overrides))
        return dataset, make_split(split, dataset.conditions, seed=split_seed)

    return make


# --- local HTTP server ------------------------------------------------------------------------


class QuietStaticHandler(SimpleHTTPRequestHandler):
    """Serves a folder's files without logging every request to the test output."""

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (base signature)
        """Keep test output quiet."""


@pytest.fixture
def http_server() -> Iterator[Callable[..., tuple[str, ThreadingHTTPServer]]]:
    """Factory ``(handler=None, *, directory=None, **attributes) -> (base URL, server)``.

    Each call starts a threaded server on 127.0.0.1 at a free port; all are shut down when the
    test ends. Give either a ``BaseHTTPRequestHandler`` subclass or a ``directory`` to serve.
    """
    running: list[tuple[ThreadingHTTPServer, threading.Thread]] = []

    def start(
        handler: type[BaseHTTPRequestHandler] | None = None,
        *,
        directory: str | Path | None = None,
        **attributes: Any,
    ) -> tuple[str, ThreadingHTTPServer]:
        if (handler is None) == (directory is None):
            raise TypeError("http_server needs exactly one of a handler class and a directory")
        if directory is not None:
            handler = functools.partial(QuietStaticHandler, directory=str(directory))
        httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        for name, value in attributes.items():
            setattr(httpd, name, value)
        thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.01})
        thread.daemon = True
        thread.start()
        running.append((httpd, thread))
        return f"http://127.0.0.1:{httpd.server_address[1]}", httpd

    yield start
    for httpd, thread in running:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
