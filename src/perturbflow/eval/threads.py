"""Thread counts of the OpenMP runtimes, kept across calls into numba-compiled code.

scanpy's DE test and pdex run numba kernels; numba's OpenMP threading layer sets the thread count
of an OpenMP runtime that is already loaded, torch's among them, to the number of cores. A model
fitted after the first evaluation would then run on other threads than the user chose
(``OMP_NUM_THREADS``, ``torch.set_num_threads``): slower where jobs share the cores, and rounded
differently from a fit before it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from threadpoolctl import threadpool_limits


@contextlib.contextmanager
def keep_openmp_threads() -> Iterator[None]:
    """Every loaded OpenMP runtime gets back its thread count on exit; nothing changes inside."""
    with threadpool_limits(limits=None, user_api="openmp"):
        yield
