"""The mirror machinery as a child addon of BackOrigin: its options (origin timeouts, the
whole-answer limit, the spool and the write-back worker), the `Mirror` they configure, and its
start (resuming the spool) and shutdown (draining the write-backs)."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mitmproxy import ctx, exceptions
from mitmproxy.addonmanager import Loader

from backorigin.limits import MAX_OBJECT_SIZE
from backorigin.miss.mirror import Mirror
from backorigin.miss.origin import Timeouts
from backorigin.options import declare, option_names, optional_text, read_settings, size, texts
from backorigin.stores import StoreSettings
from backorigin.writeback.proxyspools import SpoolInUse, claim, default_spool, describe, left_behind, proxy_name, release
from backorigin.writeback.writebacksettings import WriteBackSettings

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MirrorSettings:
    max_object_size: int = size(
        "backorigin_max_object_size", MAX_OBJECT_SIZE,
        "Largest body fetched from an origin (e.g. 5g); a larger one (announced or arriving) ends the fetch: 424, "
        "or a reset once the answer has started; nothing is stored.")
    origin_hosts: tuple[str, ...] = texts(
        "backorigin_origin_hosts",
        "Hosts an origin's redirect may lead to although they are not public (private, loopback...) and not the "
        "rule's own (MirrorURL's or MirrorURLSlave's host). The rule's headers and MirrorAuth never go there.")
    spool_dir: str | None = optional_text(
        "backorigin_spool_dir",
        "Directory where pending write-backs (and, by default, tombstones) wait; they survive restarts. Default: one "
        "per proxy, CONFDIR/backorigin-spools/MODE-HOST-PORT (the listen address). A running proxy holds its "
        "spool: a second proxy given the same one is refused.")


class Mirroring:
    def __init__(self, mirror: Mirror) -> None:
        """`mirror`: the one mirror of the proxy (backorigin.parts); this child opens its spool at
        the first configure, starts its write-backs and drains them."""
        self.mirror = mirror
        self.origin = mirror.origin
        self._spool: Path | None = None  # the spool this proxy holds, once claimed
        self.settings = WriteBackSettings()

    def load(self, loader: Loader) -> None:
        for settings in (Timeouts, MirrorSettings, WriteBackSettings, StoreSettings):  # StoreSettings: backorigin_s3_endpoint
            declare(settings, loader)

    def configure(self, updated: set[str]) -> None:
        options = ctx.options
        if option_names(Timeouts) & updated:
            self.origin.timeouts = read_settings(Timeouts, options)
        mirroring = read_settings(MirrorSettings, options)
        self.origin.max_size = mirroring.max_object_size
        self.origin.allowed_hosts = frozenset(host.lower().strip("[]") for host in mirroring.origin_hosts)
        self.settings = settings = read_settings(WriteBackSettings, options)
        if self._spool is not None and {"backorigin_spool_dir", "confdir"} & updated:
            if spool_of(mirroring.spool_dir, options) != self._spool:
                raise exceptions.OptionsError("backorigin_spool_dir: cannot change while running; restart instead")
        if self._spool is None:  # the listen address names the default spool once: moving it takes a restart
            spool = spool_of(mirroring.spool_dir, options)
            try:
                claim(spool, proxy_name(options.mode, options.listen_host, options.listen_port))
            except SpoolInUse as e:
                raise exceptions.OptionsError(
                    f"backorigin_spool_dir: {e}; give each proxy its own spool (another listen address, or "
                    f"--set backorigin_spool_dir=DIR)") from None
            self.mirror.writeback.open(spool, fsync=settings.fsync)
            self._spool = spool
        writeback = self.mirror.writeback
        self.mirror.min_free = settings.min_free
        self.mirror.fsync = writeback.spool.fsync = settings.fsync
        # the worker's arguments, read when it starts (at running)
        writeback.workers = settings.workers
        writeback.max_pending = settings.max_pending
        writeback.endpoint = read_settings(StoreSettings, options).s3_endpoint
        writeback.process.refresh()  # a change at run time reaches the worker

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
        await self.mirror.shutdown(self.settings.shutdown_timeout)
        if self._spool is not None:
            release(self._spool)


def spool_of(spool_dir: str | None, options: Any) -> Path:
    """backorigin_spool_dir, else this proxy's own spool (see writeback.proxyspools)."""
    if spool_dir:
        return Path(spool_dir).expanduser()
    return default_spool(options.confdir, options.mode, options.listen_host, options.listen_port)
