"""A tiny process holding a PolicyStore, for the SIGHUP test.

Usage: python policy_store_child.py POLICY_FILE. Prints `ready`, then `hosts: ...` after
each successful reload and on SIGUSR1 (the hosts currently in force); logs failures.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import sys

from prometheus_client import CollectorRegistry

from gateway.policy_store import PolicyStore
from policies.model import PolicySet


def show(policy_set: PolicySet) -> None:
    print("hosts: " + ",".join(sorted(policy_set.by_host)), flush=True)


async def main(path: str) -> None:
    logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(levelname)s %(message)s")
    store = PolicyStore([path], on_change=show, registry=CollectorRegistry())
    loop = asyncio.get_running_loop()
    store.install_sighup(loop)
    loop.add_signal_handler(signal.SIGUSR1, lambda: show(store.current))
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    print("ready", flush=True)
    await stop.wait()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
