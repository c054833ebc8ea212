"""`python -m bench` (`make bench`): the forward-path benchmark, then the audit benchmark.

The audit benchmark (`bench.audit_bench`) runs when that module is present.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys

from bench import proxy_bench


def main() -> int:
    status = proxy_bench.main()
    if importlib.util.find_spec("bench.audit_bench") is not None:
        print()
        audit_bench = importlib.import_module("bench.audit_bench")
        status = max(status, int(audit_bench.main() or 0))
    return status


if __name__ == "__main__":
    sys.exit(main())
