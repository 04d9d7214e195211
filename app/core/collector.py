"""Python's cyclic garbage collector, set for a long-running server process."""

from __future__ import annotations

import gc

# A young collection runs once this many more container objects were allocated than freed.
# At Python's default (700) the alerts of the requests in flight alone passed it hundreds of
# times a second in a storm: collections took 3-8 % of the serving process's CPU, and every
# few hundred milliseconds a full one stalled all requests for ~15 ms. Set above what
# requests in flight hold, a collection runs only once garbage has really piled up (every
# few seconds in a storm, ~30 ms).
YOUNG_THRESHOLD = 50_000

_settled = False


def settle() -> None:
    """Called once start-up is done. What start-up built (models, schemas, the workflow
    machines) lives as long as the process: frozen out of the collector's reach, it is not
    walked by every full collection. Once per process: apps started again in one process
    (tests) must stay collectable."""
    global _settled
    if not _settled:
        _settled = True
        gc.collect()
        gc.freeze()
        gc.set_threshold(YOUNG_THRESHOLD, 20, 10)
