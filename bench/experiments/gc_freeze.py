"""Experiment, not part of the addon: load after the addon to measure what moving every object
that exists at start-up out of the cyclic garbage collector's reach is worth
(python -m bench --only hit --with-script bench/experiments/gc_freeze.py).

The addon's imports (boto3's service models, pydantic, httpx, prometheus_client) leave the
mitmdump process with far more long-lived container objects than plain mitmdump has, and every
full collection walks them all; on a hit that time is charged to whatever mitmproxy frame
allocated at that moment. gc.freeze() moves them to the permanent generation.
"""

import gc
import logging


def running() -> None:
    gc.collect()
    logging.getLogger(__name__).info("gc.freeze: %d objects frozen", len(gc.get_objects()))
    gc.freeze()
