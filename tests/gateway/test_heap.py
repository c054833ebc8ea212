"""The serving GC settings, checked in a process of their own (they are process-wide)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

PROBE = """
import gc, json
from gateway.heap import YOUNG_THRESHOLD, settle
before = gc.get_threshold()
class Node:
    pass
left = Node(); left.other = Node(); left.other.other = left   # start-up cyclic garbage
del left
settle()
frozen = gc.get_freeze_count()
# After start-up: cyclic garbage is still collected, reference-counted objects still freed.
late = Node(); late.me = late
del late
found = gc.collect()
print(json.dumps({"before": before, "after": gc.get_threshold(), "frozen": frozen,
                  "found": found, "young": YOUNG_THRESHOLD}))
"""


def test_settle_freezes_the_start_up_heap_and_raises_only_the_young_threshold() -> None:
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    facts = json.loads(done.stdout)
    assert facts["frozen"] > 1000  # the modules and objects start-up made
    assert facts["after"] == [facts["young"], *facts["before"][1:]]
    assert facts["young"] > facts["before"][0]
    assert facts["found"] >= 1  # cycles made after settling are still collected
