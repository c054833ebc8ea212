"""The serving process's garbage collector: the start-up heap frozen, young passes rarer.

A gateway process builds its long-lived objects at start-up (modules, the app, policies,
keys, connection pools) and then makes many short-lived ones per request. At CPython's
default thresholds the cyclic collector runs a young pass every ~700 net allocations,
each walking every object of every request in flight, and every few thousand requests a
full pass walking the whole start-up heap (tens of milliseconds each): together a large
share of the CPU a proxied request costs.

`settle()` runs once, when the process is about to serve: it collects what start-up left
behind, freezes the survivors (reference counting still frees them; only the cyclic
collector stops walking them again and again) and raises the young threshold to
YOUNG_THRESHOLD net allocations. Cyclic garbage then waits a little longer for its pass,
so the memory it holds stays bounded by that threshold.

    settle()                          # once, after start-up, before serving
"""

from __future__ import annotations

import gc

YOUNG_THRESHOLD = 10_000


def settle() -> None:
    """Collect, freeze the start-up heap and make young passes rarer (see the docstring)."""
    gc.collect()
    gc.freeze()
    _, middle, old = gc.get_threshold()
    gc.set_threshold(YOUNG_THRESHOLD, middle, old)
