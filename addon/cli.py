"""The `backorigin` command: run the proxy, the demo, and the offline tools.

argparse (the standard library) rather than click or typer: the commands are few and flat,
argparse gives each subcommand its own --help, and the addon adds no dependency for it.
`backorigin --help` and `backorigin COMMAND --help` are the reference the README points at.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from backorigin.rules import MAX_RULES_CEILING, RulesError, load_rules

ADDON_SCRIPT = Path(__file__).with_name("backorigin.py")  # what mitmdump/mitmweb load with -s
# mitmweb's flow list, with the comment column, where each flow says what backorigin decided
WEB_COLUMNS = ("tls", "icon", "path", "method", "status", "size", "time", "comment")


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except RulesError as e:
        print(e, file=sys.stderr)
        return 2


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(
        prog="backorigin",
        description="Mirror and redirect back-to-origin (OSS RoutingRules) for any S3-compatible store.",
    )
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", help="run the proxy (mitmdump or mitmweb with the addon) in front of a store",
                              description="Run mitmdump or mitmweb in reverse-proxy mode in front of STORE with the "
                                          "backorigin addon loaded. Any mitmproxy or backorigin option goes through "
                                          "--set NAME=VALUE; arguments after -- go to mitmproxy unchanged.")
    run.add_argument("--store", required=True, metavar="URL", help="the S3 store, e.g. http://127.0.0.1:8333")
    run.add_argument("--rules", type=Path, default=Path("rules.json"), metavar="FILE", help="the rules file (default: rules.json)")
    run.add_argument("--ui", choices=("dump", "web"), default="dump", help="mitmdump (default) or mitmweb")
    run.add_argument("--listen", default="127.0.0.1:8080", metavar="HOST:PORT", help="where clients connect (default: 127.0.0.1:8080)")
    run.add_argument("--set", action="append", default=[], metavar="NAME=VALUE", dest="options",
                     help="a mitmproxy or backorigin option, e.g. --set keep_host_header=true (repeatable)")
    run.add_argument("extra", nargs=argparse.REMAINDER, help="-- then arguments for mitmproxy as they are")
    run.set_defaults(handler=run_proxy)

    demo = commands.add_parser("demo", help="run an embedded store, a sample origin and the proxy on this machine")
    demo.add_argument("--rules", type=Path, default=Path("rules.json"))
    demo.add_argument("--state", type=Path, default=Path(".demo"), help="folder for the store's data")
    demo.add_argument("--proxy-port", type=int, default=8080)
    demo.add_argument("--store-port", type=int, default=8333)
    demo.add_argument("--origin-port", type=int, default=8000)
    demo.add_argument("--ui", choices=("dump", "web"), default="dump", help="mitmdump (default) or mitmweb")
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

    explainer = commands.add_parser("explain", help="say which rule acts on a URL and what it builds (offline)")
    explainer.add_argument("url", help="a store URL, e.g. http://store:8333/bucket/key")
    explainer.add_argument("--rules", type=Path, default=Path("rules.json"), metavar="FILE")
    explainer.add_argument("--vhost-domain", action="append", default=[], metavar="DOMAIN",
                           help="a domain of virtual-hosted buckets (bucket.DOMAIN/key), as backorigin_vhost_domains")
    explainer.set_defaults(handler=explain_url)

    missing = commands.add_parser(
        "ledger-missing", help="print the keys a miss ledger names that are still missing from their bucket"
    )
    missing.add_argument("ledger", type=Path, help="the JSON-lines file written with --set backorigin_ledger=FILE")
    missing.add_argument("--store", required=True, metavar="URL",
                         help="the store, e.g. http://127.0.0.1:8333 (credentials: boto3's chain)")
    missing.set_defaults(handler=lambda a: print_ledger_missing(a.ledger, a.store))
    return top


def mitmproxy_command(ui: str, store: str, rules: Path, listen: str, options: Sequence[str],
                      extra: Sequence[str] = ()) -> list[str]:
    """The mitmdump/mitmweb command line `backorigin run` starts."""
    host, _, port = listen.rpartition(":")
    if not host or not port.isdigit():
        raise SystemExit(f"backorigin run: --listen {listen!r} is not HOST:PORT")
    for option in options:
        if "=" not in option:
            raise SystemExit(f"backorigin run: --set {option!r} is not NAME=VALUE")
    program = "mitmweb" if ui == "web" else "mitmdump"
    installed = Path(sys.executable).with_name(program)
    # web_columns is a list option: each --set adds one column (a comma would make one unknown name)
    columns = [f"web_columns={column}" for column in WEB_COLUMNS] if ui == "web" else []
    sets = [f"backorigin_rules={rules}", *columns, *options]
    return [
        str(installed) if installed.exists() else (shutil.which(program) or program),
        "-s", str(ADDON_SCRIPT), "--mode", f"reverse:{store}", "--listen-host", host.strip("[]"), "--listen-port", port,
        *(arg for option in sets for arg in ("--set", option)),
        *[arg for arg in extra if arg != "--"],
    ]


def run_proxy(args: argparse.Namespace) -> int:
    load_rules(args.rules, MAX_RULES_CEILING)  # a bad file is reported here, before mitmproxy starts
    command = mitmproxy_command(args.ui, args.store, args.rules, args.listen, args.options, args.extra)
    print(" ".join(command), file=sys.stderr)
    os.execv(command[0], command)  # mitmproxy takes over the terminal, signals and exit status


def _demo(args: argparse.Namespace) -> int:
    from backorigin.demo import run_demo

    return run_demo(args.rules, args.state, args.proxy_port, args.store_port, args.origin_port, args.ui)


def explain_url(args: argparse.Namespace) -> int:
    from backorigin.explain import explain

    print(explain(load_rules(args.rules, MAX_RULES_CEILING), args.url, tuple(args.vhost_domain)))
    return 0


def import_rules(path: Path, bucket: str) -> int:
    from backorigin.convert import ConversionError, checked_rules_json, website_to_rules

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
    from backorigin.convert import bucket_rules, rules_to_oss_xml

    xml, warnings = rules_to_oss_xml(bucket_rules(load_rules(path, MAX_RULES_CEILING), bucket))
    warn(path, warnings)
    sys.stdout.write(xml)
    return 0


def print_ledger_missing(ledger: Path, store: str) -> int:
    """One `s3://bucket/key` line per key still to copy, for a migration tool's list."""
    from backorigin import ledger as miss_ledger
    from backorigin.writeback import make_s3_client

    try:
        missing = miss_ledger.backfill(ledger, miss_ledger.store_checker(make_s3_client(store)))
    except (OSError, ValueError) as e:
        print(f"{ledger}: {getattr(e, 'strerror', None) or e}", file=sys.stderr)
        return 2
    for bucket, key in missing:
        print(f"s3://{bucket}/{key}")
    print(f"{len(missing)} key(s) still missing", file=sys.stderr)
    return 0


def warn(source: Path, warnings: list[str]) -> None:
    for warning in warnings:
        print(f"warning: {source}: {warning}", file=sys.stderr)
