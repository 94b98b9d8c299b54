"""The mirror machinery as a child addon of BackOrigin: its options (origin timeouts, the
whole-answer limit, the spool and the write-back worker), the `Mirror` they configure, and its
start (resuming the spool) and shutdown (draining the write-backs)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Optional

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

from backorigin.limits import MAX_OBJECT_SIZE, SPOOL_MIN_FREE, WHOLE_ANSWER_LIMIT
from backorigin.miss.mirror import Mirror
from backorigin.miss.origin import Timeouts
from backorigin.options import parse_seconds, parse_size
from backorigin.s3.stores import add_s3_endpoint_option
from backorigin.writeback.proxyspools import SpoolInUse, claim, default_spool, describe, left_behind, proxy_name, release

logger = logging.getLogger(__name__)

_TIMEOUT_OPTIONS = {
    "backorigin_origin_connect_timeout": "connect",
    "backorigin_origin_read_timeout": "read",
    "backorigin_origin_timeout": "total",
    "backorigin_copy_timeout": "copy",
}


def add_spool_fsync_option(loader: Loader) -> None:
    """backorigin_spool_fsync, declared by each child that reads it (the deletes' tombstones follow it)."""
    loader.add_option(
        "backorigin_spool_fsync", bool, False,
        "fsync a mirrored body and its manifest before the last byte of its answer goes out (survives power "
        "loss); off: they are in the page cache by then (survives a crash of the proxy, kill -9 included).",
    )


class Mirroring:
    def __init__(self, mirror: Mirror) -> None:
        """`mirror`: the one mirror of the proxy (backorigin.parts); this child opens its spool at
        the first configure, starts its write-backs and drains them."""
        self.mirror = mirror
        self.origin = mirror.origin
        self._spool: Path | None = None  # the spool this proxy holds, once claimed

    def load(self, loader: Loader) -> None:
        loader.add_option(
            "backorigin_origin_timeout", str, "10",
            "Seconds an origin fetch may take in all, redirects included (text, e.g. \"0.5\").",
        )
        loader.add_option("backorigin_origin_connect_timeout", str, "5", "Seconds to connect to an origin.")
        loader.add_option("backorigin_origin_read_timeout", str, "10", "Seconds an origin may stay silent mid-answer.")
        loader.add_option(
            "backorigin_max_inline", str, WHOLE_ANSWER_LIMIT,
            "Largest miss answered only once its whole body has arrived and been checked (with its ETag; a broken "
            "origin gets 424). Larger GETs are streamed as the body arrives (no ETag in that first answer; a broken "
            "origin resets the connection). Memory stays bounded either way: bodies go through the spool.",
        )
        loader.add_option("backorigin_copy_timeout", str, "3600", "Seconds the fetch of a body over backorigin_max_inline may take.")
        loader.add_option(
            "backorigin_max_object_size", str, MAX_OBJECT_SIZE,
            "Largest body fetched from an origin (e.g. 5g); a larger one (announced or arriving) ends the fetch: 424, "
            "or a reset once the answer has started; nothing is stored.",
        )
        loader.add_option(
            "backorigin_origin_hosts", Sequence[str], [],
            "Hosts an origin's redirect may lead to although they are not public (private, loopback...) and not the "
            "rule's own (MirrorURL's or MirrorURLSlave's host). The rule's headers and MirrorAuth never go there.",
        )
        add_spool_fsync_option(loader)
        add_s3_endpoint_option(loader)
        loader.add_option(
            "backorigin_spool_dir", Optional[str], None,  # type: ignore[arg-type]  # mitmproxy's Loader is typed too narrowly
            "Directory where pending write-backs (and, by default, tombstones) wait; they survive restarts. Default: one "
            "per proxy, CONFDIR/backorigin-spools/MODE-HOST-PORT (the listen address). A running proxy holds its "
            "spool: a second proxy given the same one is refused.",
        )
        loader.add_option(
            "backorigin_spool_min_free", str, SPOOL_MIN_FREE,
            "Free space the spool's disk keeps (e.g. 1g), while a fill writes too: a miss whose body would take the disk "
            "below it ends there (424, or a reset once answering) and gives its space back at once.",
        )
        loader.add_option("backorigin_writeback_workers", int, 4, "Uploads running at once.")
        loader.add_option(
            "backorigin_writeback_queue", int, 1000,
            "Most write-backs pending at once; past it a miss is answered but not stored (it mirrors again next time).",
        )
        loader.add_option("backorigin_shutdown_timeout", str, "30", "Seconds shutdown waits for pending write-backs.")

    def configure(self, updated: set[str]) -> None:
        options = ctx.options
        if {*_TIMEOUT_OPTIONS, "backorigin_max_inline"} & updated:
            self.origin.timeouts = Timeouts(
                **{field: parse_seconds(name, getattr(options, name)) for name, field in _TIMEOUT_OPTIONS.items()},
                whole_limit=parse_size("backorigin_max_inline", options.backorigin_max_inline),
            )
        if "backorigin_max_object_size" in updated:
            self.origin.max_size = parse_size("backorigin_max_object_size", options.backorigin_max_object_size)
        if "backorigin_origin_hosts" in updated:
            self.origin.allowed_hosts = frozenset(host.lower().strip("[]") for host in options.backorigin_origin_hosts)
        if "backorigin_shutdown_timeout" in updated:
            parse_seconds("backorigin_shutdown_timeout", options.backorigin_shutdown_timeout)
        for name in ("backorigin_writeback_workers", "backorigin_writeback_queue"):
            if name in updated and getattr(options, name) < 1:
                raise exceptions.OptionsError(f"{name}: must be at least 1")
        if self._spool is not None and {"backorigin_spool_dir", "confdir"} & updated:
            if spool_of(options) != self._spool:
                raise exceptions.OptionsError("backorigin_spool_dir: cannot change while running; restart instead")
        if self._spool is None:  # the listen address names the default spool once: moving it takes a restart
            spool = spool_of(options)
            try:
                claim(spool, proxy_name(options.mode, options.listen_host, options.listen_port))
            except SpoolInUse as e:
                raise exceptions.OptionsError(
                    f"backorigin_spool_dir: {e}; give each proxy its own spool (another listen address, or "
                    f"--set backorigin_spool_dir=DIR)") from None
            self.mirror.writeback.open(spool, fsync=options.backorigin_spool_fsync)
            self._spool = spool
        writeback = self.mirror.writeback
        self.mirror.min_free = parse_size("backorigin_spool_min_free", options.backorigin_spool_min_free)
        if "backorigin_spool_fsync" in updated:
            self.mirror.fsync = writeback.spool.fsync = options.backorigin_spool_fsync
        # the worker's arguments, read when it starts (at running)
        writeback.workers = options.backorigin_writeback_workers
        writeback.max_pending = options.backorigin_writeback_queue
        writeback.endpoint = options.backorigin_s3_endpoint

    def running(self) -> None:
        """Start the write-back worker; it resumes what a previous run left spooled, and each
        such object is served from the spool until it lands."""
        spool = self.mirror.writeback.spool.directory
        logger.info("write-back spool: %s", spool)
        for left in left_behind(Path(ctx.options.confdir), spool):
            logger.log(logging.WARNING if left.pending or left.writes else logging.INFO, "%s", describe(left))
        self.mirror.resume()

    async def aclose(self) -> None:
        """Cancel fetches under way, drain the write-backs (up to backorigin_shutdown_timeout),
        then let go of the spool."""
        await self.mirror.shutdown(parse_seconds("backorigin_shutdown_timeout", ctx.options.backorigin_shutdown_timeout))
        if self._spool is not None:
            release(self._spool)


def spool_of(options: Any) -> Path:
    """backorigin_spool_dir, else this proxy's own spool (see writeback.proxyspools)."""
    if options.backorigin_spool_dir:
        return Path(options.backorigin_spool_dir).expanduser()
    return default_spool(options.confdir, options.mode, options.listen_host, options.listen_port)
