"""Protecting the origin at cut-over, as a child addon of BackOrigin: the options of miss.guard
(origin 404s remembered, fetches at once per origin host, circuit breakers), checked in configure
and handed to the mirror's OriginGuard."""

from __future__ import annotations

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

from backorigin.miss.guard import GuardSettings, OriginGuard
from backorigin.options import parse_seconds

OPTIONS = ("backorigin_origin_404_ttl", "backorigin_origin_concurrency", "backorigin_origin_queue",
           "backorigin_breaker_failures", "backorigin_breaker_window", "backorigin_breaker_cooldown")


class OriginProtection:
    def __init__(self, guard: OriginGuard) -> None:
        self.guard = guard

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "backorigin_origin_404_ttl", str, "60",
            "Seconds an origin's 404 for a key is remembered (per rule): within it, misses of the key get the 404 "
            "without asking the origin. A write or delete of the key through the proxy forgets it. 0: off.",
        )
        loader.add_option(
            "backorigin_origin_concurrency", int, 64,
            "Most origin fetches at once per origin host; further misses wait (see backorigin_origin_queue).",
        )
        loader.add_option(
            "backorigin_origin_queue", int, 1000,
            "Most misses waiting for an origin host's fetch; past it a miss gets 503 SlowDown, which S3 clients retry.",
        )
        loader.add_option(
            "backorigin_breaker_failures", int, 5,
            "Failures in a row (network errors, timeouts, 5xx) that open an origin host's circuit: its misses then "
            "fail at once (424, or the rule's MirrorURLSlave) for backorigin_breaker_cooldown. 0: never.",
        )
        loader.add_option(
            "backorigin_breaker_window", str, "30",
            "Seconds within which failures count as in a row (a failure after a longer quiet starts the count again).",
        )
        loader.add_option(
            "backorigin_breaker_cooldown", str, "10",
            "Seconds an open circuit waits before one fetch tests the origin (its success closes the circuit).",
        )

    def configure(self, updated: set[str]) -> None:
        if not set(OPTIONS) & updated:
            return
        options = ctx.options
        for name in ("backorigin_origin_concurrency", "backorigin_origin_queue"):
            if getattr(options, name) < 1:
                raise exceptions.OptionsError(f"{name}: must be at least 1")
        if options.backorigin_breaker_failures < 0:
            raise exceptions.OptionsError("backorigin_breaker_failures: must be 0 (never) or more")
        self.guard.configure(GuardSettings(
            not_found_ttl=parse_seconds("backorigin_origin_404_ttl", options.backorigin_origin_404_ttl, zero_is_off=True),
            concurrency=options.backorigin_origin_concurrency,
            queue=options.backorigin_origin_queue,
            failures=options.backorigin_breaker_failures,
            window=parse_seconds("backorigin_breaker_window", options.backorigin_breaker_window),
            cooldown=parse_seconds("backorigin_breaker_cooldown", options.backorigin_breaker_cooldown),
        ))
