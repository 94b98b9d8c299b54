"""The `backorigin` command: run the proxy, the demo, and the offline tools.

argparse (the standard library) rather than click or typer: the commands are few and flat,
argparse gives each subcommand its own --help, and the addon adds no dependency for it.
`backorigin --help` and `backorigin COMMAND --help` are the reference the README points at.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TypeVar
from urllib.parse import urlsplit

from backorigin.rules.model import MAX_RULES_CEILING, RulesError
from backorigin.rules.parsing import load_rules
from backorigin.tools.demo import DemoPorts
from backorigin.tools.run import RunError, run_proxy
from backorigin.tools.shards import parse_shard


def package_version() -> str:
    """The installed distribution's version (pyproject.toml's), the one place it is written."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("backorigin")
    except PackageNotFoundError:
        return "unknown (not installed)"


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except RulesError as e:
        print(e, file=sys.stderr)
        return 2
    except RunError as e:
        print(f"backorigin {args.command}: {e}", file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="backorigin",
        description="Mirror and redirect back-to-origin (OSS RoutingRules) for any S3-compatible store.",
    )
    top.add_argument("--version", action="version", version=f"%(prog)s {package_version()}")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser(
        "run", help="run the proxy (mitmdump or mitmweb with the addon) in front of a store",
        description="Run mitmdump or mitmweb with the backorigin addon loaded, as a reverse proxy in front of "
                    "--store (the default), or as an explicit proxy (regular, upstream:URL) or a transparent one "
                    "for clients that keep addressing the store. Any mitmproxy or backorigin option goes through "
                    "--set NAME=VALUE; arguments after -- go to mitmproxy unchanged. The README has a section per mode.")
    run.add_argument("--mode", default="reverse", metavar="MODE",
                     help="reverse (default: clients use the proxy as their endpoint; needs --store; sets "
                          "keep_host_header=true unless you --set it), regular (clients set HTTP_PROXY/HTTPS_PROXY), "
                          "transparent (the OS redirects the clients' connections; run sets up no redirection), or "
                          "upstream:URL (regular, through another proxy at URL)")
    run.add_argument("--store", action="append", default=[], metavar="URL",
                     help="the S3 store, e.g. http://127.0.0.1:8333: in reverse mode the one behind the proxy; in the "
                          "other modes each store the proxy acts for (repeatable, backorigin_stores), as clients name "
                          "it in their URLs; requests to any other host are forwarded untouched")
    run.add_argument("--rules", type=Path, default=Path("rules.json"), metavar="FILE", help="the rules file (default: rules.json)")
    run.add_argument("--ui", choices=("dump", "web"), default="dump", help="mitmdump (default) or mitmweb")
    run.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="where clients connect (default: 127.0.0.1:8080)")
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="options",
                     help="a mitmproxy or backorigin option, e.g. --set backorigin_metrics_port=9464 (repeatable)")
    run.add_argument("extra", nargs=argparse.REMAINDER, help="-- then arguments for mitmproxy as they are")
    run.set_defaults(handler=run_proxy)

    demo = commands.add_parser(
        "demo", help="run an embedded store, a sample origin and the proxy on this machine (what `make run` runs)",
        description="A first look, from any folder: an embedded SeaweedFS store, a sample origin serving the sample "
                    "site shipped with backorigin, and the proxy in front of the store, each on its own port. The "
                    "store's data and the rules live in --state, so the demo starts again where it stopped. Ctrl-C "
                    "stops everything once pending write-backs have landed (exit status 0).")
    demo.add_argument("--rules", type=Path, default=None, metavar="FILE",
                      help="the rules file to run with (default: STATE/rules.json, written from the sample rules at the "
                           "first start; its loopback MirrorURLs follow --origin-port)")
    demo.add_argument("--state", type=Path, default=Path(".demo"), metavar="DIR",
                      help="folder for the store's data and the sample rules (default: .demo)")
    demo.add_argument("--origin", type=Path, default=None, metavar="DIR",
                      help="the folder the sample origin serves (default: the sample site shipped with backorigin)")
    for flag, default, what in (("--proxy-port", DemoPorts.proxy, "the proxy, where clients connect"),
                                ("--store-port", DemoPorts.store, "the store's S3 API"),
                                ("--origin-port", DemoPorts.origin, "the sample origin"),
                                ("--web-port", DemoPorts.web, "mitmweb's page, with --ui web")):
        demo.add_argument(flag, type=_argument(_port), default=default, metavar="PORT",
                          help=f"port of {what} on 127.0.0.1 (default: {default})")
    demo.add_argument("--ui", choices=("dump", "web"), default="dump",
                      help="mitmdump (default: the flows in this terminal) or mitmweb (a page in the browser)")
    demo.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="options",
                      help="a mitmproxy or backorigin option for the proxy, e.g. --set backorigin_debug_header=true "
                           "(repeatable)")
    demo.set_defaults(handler=lambda a: _demo(a))

    importer = commands.add_parser(
        "import-rules", help="print rules.json converted from OSS WebsiteConfiguration XML or AWS put-bucket-website JSON"
    )
    importer.add_argument("--bucket", required=True, help="the bucket the rules are for")
    importer.add_argument("file", type=Path, help="GetBucketWebsite/PutBucketWebsite XML or put-bucket-website JSON")
    importer.set_defaults(handler=lambda a: import_rules(a.file, a.bucket))

    exporter = commands.add_parser("export-rules", help="print one bucket's rules as OSS WebsiteConfiguration XML")
    exporter.add_argument("--bucket", required=True, help="the bucket whose rules are exported")
    exporter.add_argument("rules", type=Path, help="the rules file")
    exporter.set_defaults(handler=lambda a: export_rules(a.rules, a.bucket))

    explainer = commands.add_parser(
        "explain", help="say which rule acts on a URL and what it builds (offline)",
        description="Which rule of the rules file acts on a GET of URL, for a missing and for an existing object, and "
                    "the origin URL or Location it builds. Nothing is fetched. URL is a whole store URL, or a path "
                    "(/bucket/key) together with --store.")
    explainer.add_argument("url", metavar="URL", help="a store URL, e.g. http://store:8333/bucket/key, or /bucket/key with --store")
    explainer.add_argument("--store", default=None, metavar="URL",
                           help="the store a path is sent to, e.g. http://store:8333 (a redirect without HostName points "
                                "at the host the client used)")
    explainer.add_argument("--rules", type=Path, default=Path("rules.json"), metavar="FILE",
                           help="the rules file (default: rules.json)")
    explainer.add_argument("--vhost-domain", action="append", default=[], metavar="DOMAIN",
                           help="a domain of virtual-hosted buckets (bucket.DOMAIN/key), as backorigin_vhost_domains")
    explainer.set_defaults(handler=explain_url)

    missing = commands.add_parser(
        "ledger-missing", help="print the keys a miss ledger names that are still missing from their bucket",
        description="One s3://bucket/key line per key of the miss ledger that the store still lacks (mirrored but "
                    "not stored: MirrorProxyPass, an integrity check, a failed fetch...), ready for a bulk copy tool. "
                    "Keys deleted through the proxy are left out: the ledger says where its proxy keeps tombstones.")
    missing.add_argument("ledger", type=Path, help="the JSON-lines file written with --set backorigin_ledger=FILE")
    missing.add_argument("--store", required=True, metavar="URL",
                         help="the store, e.g. http://127.0.0.1:8333 (credentials: boto3's chain)")
    _tombstones_argument(missing)
    missing.set_defaults(handler=lambda a: print_ledger_missing(a.ledger, a.store, a.tombstones))

    backfill = commands.add_parser(
        "backfill", help="copy every object the store still lacks from the origin, as a GET through the proxy would",
        description="The final sweep of a migration, without mitmproxy: for each key, skip it when the store has it "
                    "or a tombstone names it, else apply the bucket's rules as a GET through the proxy would (first "
                    "matching rule, URL, headers, key rewriting, secondary origin, integrity checks, metadata) and "
                    "store the origin's body create-only. Resumable: after Ctrl-C or kill -9, the same command "
                    "continues from the journal in --state. Exit status 0 only when no key failed.")
    _key_source_arguments(backfill)
    backfill.add_argument("--concurrency", type=_argument(_positive_int), default=8, metavar="N",
                          help="objects copied at once (default: 8)")
    backfill.add_argument("--max-rps", type=_argument(_positive_float), default=None, metavar="R",
                          help="at most R requests a second to the origins, redirects included (default: no limit)")
    backfill.add_argument("--max-bandwidth", type=_argument(_byte_rate), default=None, metavar="RATE",
                          help="at most RATE bytes a second read from the origins, e.g. 50m, 512k (default: no limit)")
    backfill.add_argument("--state", type=Path, default=None, metavar="DIR",
                          help="folder for the journal of finished keys and the bodies in flight (default: .backfill, "
                               "and .backfill/shard-K-of-N for a shard); one sweep at a time per folder")
    backfill.add_argument("--report", type=Path, default=None, metavar="FILE", help="also write the report as JSON to FILE")
    backfill.add_argument("--metrics-port", type=_argument(_positive_int), default=None, metavar="PORT",
                          help="serve progress as Prometheus metrics on 127.0.0.1:PORT/metrics (as backorigin_metrics_port)")
    backfill.set_defaults(handler=lambda a: _backfill(a))

    verify = commands.add_parser(
        "verify", help="check that every key is in the store with the origin's size (and ETag): can the rules go?",
        description="For each key: HEAD the store, and HEAD the origin at the URL the bucket's rule builds for it. "
                    "A key is reported when the store lacks it while the origin has it, or when the sizes differ, or "
                    "the ETags where both are plain MD5 ETags. Exit status 0 means every key is there and matches.")
    _key_source_arguments(verify).add_argument(
        "--store-listing", action="store_true",
        help="list the store's bucket with ListObjectsV2 (with --check origin: every object a rollback must find at the origin)")
    verify.add_argument("--check", choices=("store", "origin"), default="store",
                        help="store (default): is every origin object in the store, the same (can the rules go?); origin: "
                             "is every store object at its S3 origin, the same, and no key deleted through the proxy still "
                             "there (is a rollback to the origin safe? see docs/write-through.md)")
    verify.add_argument("--concurrency", type=_argument(_positive_int), default=16, metavar="N", help="keys checked at once (default: 16)")
    verify.add_argument("--report", type=Path, default=None, metavar="FILE", help="also write the report as JSON to FILE")
    verify.set_defaults(handler=lambda a: _verify(a))

    spools = commands.add_parser(
        "spools", help="list the proxies' spool folders with what they hold; remove the empty ones",
        description="Each proxy keeps its pending write-backs (and by default its tombstones) in a spool folder of "
                    "its own, CONFDIR/backorigin-spools/MODE-HOST-PORT, and removes it when it stops with nothing in "
                    "it. This lists the spools there are: pending write-backs, write-backs the store refused "
                    "(failed/), tombstones, and the proxy using each. A spool with pending write-backs is resumed by "
                    "running one proxy with --set backorigin_spool_dir=SPOOL.")
    spools.add_argument("--confdir", type=Path, default=Path("~/.mitmproxy"), metavar="DIR",
                        help="mitmproxy's confdir the proxies ran with (default: ~/.mitmproxy)")
    spools.add_argument("--remove-empty", action="store_true",
                        help="remove the spools that hold nothing and that no running proxy uses")
    spools.set_defaults(handler=lambda a: list_spools(a.confdir, a.remove_empty))

    report = commands.add_parser("report", help="work with the JSON reports of backfill and verify (report merge)")
    report_commands = report.add_subparsers(dest="report_command", required=True, metavar="COMMAND")
    merge = report_commands.add_parser(
        "merge", help="add up the reports of every shard of one backfill or verify into one report",
        description="Add up the --report files of the N shards (--shard K/N) of one backfill or verify: keys, "
                    "counts, bytes and problems, as one process over every key would have counted them, printed as "
                    "text. Refused when the reports are of different commands, buckets or stores, or a shard is "
                    "missing or given twice. Exit status 0 when the merged report is ok, 1 when it is not (a key failed or "
                    "is a problem, or a shard was interrupted), 2 when the reports cannot be merged.")
    merge.add_argument("reports", type=Path, nargs="+", metavar="REPORT", help="the JSON report of each shard")
    merge.add_argument("--out", type=Path, default=None, metavar="FILE", help="also write the merged report as JSON to FILE")
    merge.set_defaults(handler=lambda a: _merge_reports(a))
    return top


def _key_source_arguments(command: argparse.ArgumentParser) -> argparse._MutuallyExclusiveGroup:
    """What backfill and verify share: the rules, the store, the bucket, where keys come from (the
    group returned), tombstones."""
    command.add_argument("--rules", type=Path, required=True, metavar="FILE", help="the rules file the proxies use")
    command.add_argument("--store", required=True, metavar="URL",
                         help="the store, e.g. http://127.0.0.1:8333 (credentials: boto3's chain)")
    command.add_argument("--bucket", required=True, metavar="NAME", help="the bucket (its rules say where the origin is)")
    source = command.add_mutually_exclusive_group(required=True)
    source.add_argument("--keys", type=Path, metavar="FILE", help="a file with one key per line")
    source.add_argument("--ledger", type=Path, metavar="FILE",
                        help="a miss ledger (backorigin_ledger): the bucket's mirrored keys, origin 404s left out")
    source.add_argument("--origin-listing", action="store_true",
                        help="list the S3 origin of each Mirror rule (MirrorURL http(s)://HOST[:PORT]/BUCKET/[PREFIX/], "
                             "MirrorAuth or public) with ListObjectsV2; rules that rewrite keys are refused")
    command.add_argument("--shard", type=_argument(parse_shard), default=None, metavar="K/N",
                         help="only the keys of shard K of N (K from 0 to N-1, as a Kubernetes Indexed Job's "
                              "JOB_COMPLETION_INDEX): a stable hash of the key, so N processes on N machines share the "
                              "work without overlap; default: JOB_COMPLETION_INDEX/JOB_COMPLETIONS when both are set, "
                              "else every key. Each shard writes its own --report; `backorigin report merge` adds them up")
    _tombstones_argument(command)
    return source


def _tombstones_argument(command: argparse.ArgumentParser) -> None:
    command.add_argument("--tombstones", default=None, metavar="DIR_OR_S3URL",
                         help="the proxies' tombstones, whose keys are skipped: the proxy's spool folder's tombstones "
                              "folder (SPOOL/tombstones), the s3://BUCKET/PREFIX/ the proxies use "
                              "(backorigin_tombstones), or none. Default: with --ledger, where the ledger says its "
                              "proxy keeps them; otherwise none")


T = TypeVar("T")


def _argument(parse: Callable[[str], T]) -> Callable[[str], T]:
    """argparse's type= for `parse`: the ValueError it raises is the usage error argparse prints."""
    def convert(text: str) -> T:
        try:
            return parse(text)
        except ValueError as e:
            raise argparse.ArgumentTypeError(str(e)) from None
    return convert


def _positive_int(text: str) -> int:
    if not text.strip().isdigit() or int(text) < 1:
        raise ValueError(f"{text!r} must be 1 or more")
    return int(text)


def _port(text: str) -> int:
    if not text.strip().isdigit() or not 1 <= int(text) <= 65535:
        raise ValueError(f"{text!r} is not a port (1 to 65535)")
    return int(text)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise ValueError(f"{text!r} must be a positive number")
    return value


def _byte_rate(text: str) -> int:
    from backorigin.tools.backfill import parse_rate

    return parse_rate(text)


def _backfill(args: argparse.Namespace) -> int:
    from backorigin.tools.backfill import run_command

    return run_command(args)


def _verify(args: argparse.Namespace) -> int:
    from backorigin.tools.verify import run_command

    return run_command(args)


def _merge_reports(args: argparse.Namespace) -> int:
    from backorigin.tools.report import run_merge

    return run_merge(args.reports, args.out)


def _demo(args: argparse.Namespace) -> int:
    from backorigin.tools.demo import run_demo

    ports = DemoPorts(args.proxy_port, args.store_port, args.origin_port, args.web_port)
    return run_demo(args.rules, args.state, ports, args.ui, args.origin, args.options)


def explain_url(args: argparse.Namespace) -> int:
    from backorigin.rules.explain import explain
    from backorigin.tools.run import checked_url

    url = args.url
    if url.startswith("/"):
        if args.store is None:
            raise RunError(f"{url} is a path: give the store it goes to with --store URL (or a whole URL)")
        url = checked_url(args.store, "--store") + url
    elif args.store is not None:
        raise RunError(f"{url} names its store already: --store is for a path (/bucket/key)")
    elif urlsplit(url).scheme not in ("http", "https") or not urlsplit(url).netloc:
        raise RunError(f"{url!r} is not a URL: give http(s)://STORE/bucket/key, or /bucket/key with --store URL")
    print(explain(load_rules(args.rules, MAX_RULES_CEILING), url, tuple(args.vhost_domain)))
    return 0


def import_rules(path: Path, bucket: str) -> int:
    from backorigin.rules.convert import ConversionError, checked_rules_json, website_to_rules

    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as e:
        raise RulesError(f"{path}: cannot read the file: {getattr(e, 'strerror', None) or e}") from e
    try:
        document, warnings = website_to_rules(text, bucket)
    except ConversionError as e:
        raise RulesError(f"{path}: {e}") from None
    warn(path, warnings)
    rules_json, warnings = checked_rules_json(document, f"{path} (converted)")
    warn(path, warnings)
    sys.stdout.write(rules_json)
    return 0


def export_rules(path: Path, bucket: str) -> int:
    from backorigin.rules.convert import export_bucket

    xml, warnings = export_bucket(load_rules(path, MAX_RULES_CEILING), bucket)
    warn(path, warnings)
    sys.stdout.write(xml)
    return 0


def print_ledger_missing(ledger: Path, store: str, tombstones_at: str | None) -> int:
    """One `s3://bucket/key` line per key still to copy, for a migration tool's list."""
    from backorigin.s3.clients import make_s3_client
    from backorigin.tools.sweep import SweepError, read_tombstones
    from backorigin.ui import ledger as miss_ledger

    try:
        tombstones = read_tombstones(tombstones_at, store, ledger)
        missing = miss_ledger.backfill(ledger, miss_ledger.store_checker(make_s3_client(store)))
    except SweepError as e:
        print(f"backorigin ledger-missing: {e}", file=sys.stderr)
        return 2
    except (OSError, ValueError) as e:
        print(f"{ledger}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return 2
    deleted = {ref for ref in missing if tombstones is not None and ref in tombstones}
    for bucket, key in missing:
        if (bucket, key) not in deleted:
            print(f"s3://{bucket}/{key}")
    print(f"{len(missing) - len(deleted)} key(s) still missing"
          + (f"; {len(deleted)} deleted through the proxy left out" if deleted else ""), file=sys.stderr)
    return 0


def list_spools(confdir: Path, remove_empty: bool) -> int:
    from backorigin.writeback.proxyspools import inventory, remove_if_empty

    found = inventory(confdir)
    for spool in found:
        held = f"in use by pid {spool.holder}" if spool.holder is not None else "no proxy uses it"
        removed = remove_empty and spool.empty and spool.holder is None and remove_if_empty(spool.directory)
        print(f"{spool.directory}: {spool.pending} pending, {spool.failed} failed, {spool.tombstones} tombstone(s); "
              f"{held}{'; removed' if removed else ''}")
    if not found:
        print(f"no spools in {confdir.expanduser()}")
    return 0


def warn(source: Path, warnings: list[str]) -> None:
    for warning in warnings:
        print(f"warning: {source}: {warning}", file=sys.stderr)
