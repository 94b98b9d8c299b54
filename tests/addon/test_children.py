"""Each child addon of BackOrigin alone, in process, as mitmproxy tests its own: made with the parts
it uses (backorigin.parts), loaded by itself into taddons (so it declares every option it reads:
reading one it does not declare fails here), configured, and what it does to its parts checked."""

from __future__ import annotations

import json
import urllib.request

import pytest
from mitmproxy import addonmanager, exceptions
from mitmproxy.test import taddons

from backorigin.addon import BackOrigin
from backorigin.context import Context
from backorigin.decision import Action, Decision, Outcome, Recorder, Stats
from backorigin.deletes.deletes import Deletes
from backorigin.listing.hiding import hide_in_force
from backorigin.listing.mergedlisting import MergedListing
from backorigin.miss.fleetleases import FleetLeases
from backorigin.miss.mirroring import Mirroring
from backorigin.miss.origin import Failure, OriginResult
from backorigin.miss.originprotection import OriginProtection
from backorigin.parts import Parts
from backorigin.rules.model import RuleBook, RulesError
from backorigin.rules.rulesfile import RulesFile
from backorigin.s3.addressing import ObjectRef
from backorigin.s3.reading import Aside, SetAside
from backorigin.stores import SetAsideLog, Stores
from backorigin.tools.embedded_store import free_ports
from backorigin.ui.commands import Commands
from backorigin.ui.ledger import Ledger
from backorigin.ui.metrics import AddonState, MetricsEndpoint
from backorigin.writeback.proxyspools import release
from backorigin.writethrough.writethrough import WriteThrough


@pytest.fixture
def parts():
    return Parts.build(own_listeners=lambda: ())


@pytest.fixture
def spooled(parts, tmp_path):
    """The parts with their spool open, as Mirroring leaves them at its first configure."""
    parts.writeback.open(tmp_path / "spool")
    return parts


def test_rules_file_checks_each_book_with_what_it_was_given(rules_file):
    checked: list[RuleBook] = []
    child = RulesFile(check=checked.append)
    with taddons.context(child) as tctx:
        tctx.configure(child, backorigin_rules=str(rules_file))
        assert checked == [child.rulebook] and child.rulebook.source == str(rules_file)

    def refuse(book):
        raise RulesError("not these rules")

    child = RulesFile(check=refuse)
    with taddons.context(child) as tctx, pytest.raises(exceptions.OptionsError, match="not these rules"):
        tctx.configure(child, backorigin_rules=str(rules_file))


def test_stores_name_the_stores_and_the_log_counts_what_is_set_aside():
    log = SetAsideLog()
    context = Context(RulesFile(), set_aside=log.note)
    child = Stores(context)
    with taddons.context(child) as tctx:
        tctx.configure(child, backorigin_stores=["http://127.0.0.1:9"], backorigin_s3_endpoint="http://127.0.0.1:9")
        assert [store.address for store in context.names.stores] == ["http://127.0.0.1:9"]
    log.note(SetAside(Aside.UNKNOWN_HOST, "elsewhere:80", "a hint"))
    assert log.counts[Aside.UNKNOWN_HOST] == 1


def test_mirroring_opens_the_spool_once_and_sets_the_write_back(parts, tmp_path):
    child = Mirroring(parts.mirror)
    with taddons.context(child) as tctx:
        tctx.configure(child, backorigin_spool_dir=str(tmp_path / "spool"), backorigin_writeback_workers=2,
                       backorigin_spool_min_free="1m", backorigin_s3_endpoint="http://127.0.0.1:9")
        assert parts.writeback.spool.directory == tmp_path / "spool"
        assert (parts.writeback.workers, parts.mirror.min_free, parts.writeback.endpoint) == (2, 2**20, "http://127.0.0.1:9")
        with pytest.raises(exceptions.OptionsError, match="cannot change while running"):
            tctx.configure(child, backorigin_spool_dir=str(tmp_path / "elsewhere"))
    release(tmp_path / "spool")


def test_origin_protection_configures_the_guard(parts):
    child = OriginProtection(parts.guard)
    with taddons.context(child) as tctx:
        tctx.configure(child, backorigin_origin_concurrency=3, backorigin_breaker_cooldown="2.5")
        assert (parts.guard.settings.concurrency, parts.guard.settings.cooldown) == (3, 2.5)
        with pytest.raises(exceptions.OptionsError, match="backorigin_origin_queue: must be at least 1"):
            tctx.configure(child, backorigin_origin_queue=0)


def test_fleet_leases_configure_the_leases(parts):
    child = FleetLeases(parts.leases)
    with taddons.context(child) as tctx:
        tctx.configure(child, backorigin_leases="bucket", backorigin_lease_ttl="12")
        assert parts.leases.settings.ttl == 12.0 and "pid" in parts.leases.settings.owner
        tctx.configure(child, backorigin_leases="off")
        assert parts.leases.settings.place is None


async def test_deletes_open_the_tombstones_beside_the_spool_and_tell_the_write_back(spooled, rules_file):
    context = Context(RulesFile())

    async def refuse(flow, reply):
        raise AssertionError("nothing is refused here")

    child = Deletes(context, spooled.mirror, spooled.tombstones, refuse)
    with taddons.context(child) as tctx:
        tctx.configure(child, backorigin_deletes="stick")
        folder = spooled.writeback.spool.directory / "tombstones"
        assert spooled.tombstones.location == str(folder) and spooled.writeback.tombstones == (None, None)
        spooled.tombstones.tombstones.add("b", "k")
        assert ("b", "k") in spooled.tombstones.tombstones and spooled.tombstones.count() == 1
        tctx.configure(child, backorigin_deletes="resurrect")
        assert spooled.tombstones.location is None and spooled.writeback.tombstones is None
        assert not await child.is_deleted(ObjectRef("b", "k"))


def test_write_through_keeps_its_journal_in_the_spool(spooled):
    synced: list[float] = []
    child = WriteThrough(Context(RulesFile()), spooled.writeback, synced=synced.append)
    with taddons.context(child) as tctx:
        tctx.configure(child, backorigin_writethrough_workers=3)
        assert child.supervisor is not None and child.supervisor.workers == 3
        assert child.supervisor.journal.directory == spooled.writeback.spool.directory / "writethrough"
        assert child.supervisor.synced == synced.append


def test_merged_listing_follows_its_option(spooled):
    child = MergedListing(Context(RulesFile()), hide_in_force(spooled.tombstones), leases_under=spooled.leases.prefix_in)
    with taddons.context(child) as tctx:
        tctx.configure(child, backorigin_merged_listing=True)
        assert child.enabled
        tctx.configure(child, backorigin_merged_listing=False)
        assert not child.enabled


def test_the_metrics_endpoint_serves_the_parts_and_what_was_measured(spooled):
    child = MetricsEndpoint(spooled.measures, AddonState(Stats(), spooled.writeback, spooled.tombstones.count,
                                                         spooled.guard, spooled.leases, {}), writethrough=lambda: None)
    spooled.measures.fetched(OriginResult.failed("http://o/k", Failure.TIMEOUT, "slow"), 0.2)
    (port,) = free_ports(1)
    with taddons.context(child) as tctx:
        tctx.configure(child, backorigin_metrics_port=port)
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
        tctx.configure(child, backorigin_metrics_port=None)
    assert 'backorigin_origin_errors_total{kind="timeout"} 1.0' in page
    assert "backorigin_origin_fetch_seconds_count 1.0" in page and "backorigin_writebacks_pending 0.0" in page


def test_the_ledger_appends_each_mirror_decision_with_where_tombstones_are(tmp_path):
    child = Ledger(tombstones_at=lambda: "/spool/tombstones")
    recorder = Recorder(listeners=[child.append])
    with taddons.context(child) as tctx:
        tctx.configure(child, backorigin_ledger=str(tmp_path / "ledger.jsonl"))
        recorder.listeners[0](Decision("b", "k", Action.MIRROR, 1, Outcome.MIRRORED))
    (entry,) = [json.loads(line) for line in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert (entry["bucket"], entry["key"], entry["tombstones"]) == ("b", "k", "/spool/tombstones")


def test_commands_read_the_write_back_they_were_given(spooled):
    child = Commands(Context(RulesFile()), Stats(), spooled.writeback, spooled.tombstones)
    with taddons.context(child) as tctx:
        counts = json.loads(tctx.master.commands.execute("backorigin.stats"))
    assert counts["writebacks.pending"] == 0


def test_only_backorigin_has_per_request_hooks():
    """mitmproxy calls every addon that has a hook function: the children's are BackOrigin's to
    call, for the flows of their kind, so a GET of an object runs one addon's hook functions."""
    per_request = ("requestheaders", "request", "responseheaders", "response", "error")
    hooked = {type(addon).__name__ for addon in addonmanager.traverse([BackOrigin()])
              for name in per_request if hasattr(addon, name)}
    assert hooked == {"BackOrigin"}
