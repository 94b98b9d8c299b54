"""Command line: python -m addon COMMAND ..."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from addon.rules import RulesError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m addon", description="backorigin tools")
    commands = parser.add_subparsers(dest="command", required=True)

    demo = commands.add_parser("demo", help="run store + sample origin + proxy on this machine")
    demo.add_argument("--rules", type=Path, default=Path("rules.json"))
    demo.add_argument("--state", type=Path, default=Path(".demo"), help="folder for the store's data")
    demo.add_argument("--proxy-port", type=int, default=8080)
    demo.add_argument("--store-port", type=int, default=8333)
    demo.add_argument("--origin-port", type=int, default=8000)
    demo.add_argument("--ui", choices=["mitmdump", "mitmweb"], default="mitmdump")

    importer = commands.add_parser(
        "import-rules", help="print rules.json converted from OSS WebsiteConfiguration XML or AWS put-bucket-website JSON"
    )
    importer.add_argument("--bucket", required=True, help="the bucket the rules are for")
    importer.add_argument("file", type=Path, help="GetBucketWebsite/PutBucketWebsite XML or put-bucket-website JSON")

    exporter = commands.add_parser("export-rules", help="print one bucket's rules as OSS WebsiteConfiguration XML")
    exporter.add_argument("--bucket", required=True, help="the bucket whose rules are exported")
    exporter.add_argument("rules", type=Path, help="the rules file")

    backfill = commands.add_parser(
        "backfill", help="print the keys a miss ledger names that are still missing from their bucket"
    )
    backfill.add_argument("ledger", type=Path, help="the JSON-lines file written with --set backorigin_ledger=FILE")
    backfill.add_argument("--endpoint", required=True, help="the store, e.g. http://127.0.0.1:8333 (credentials: boto3's chain)")

    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from addon.demo import run_demo

            return run_demo(args.rules, args.state, args.proxy_port, args.store_port, args.origin_port, args.ui)
        if args.command == "import-rules":
            return import_rules(args.file, args.bucket)
        if args.command == "export-rules":
            return export_rules(args.rules, args.bucket)
        if args.command == "backfill":
            return print_backfill(args.ledger, args.endpoint)
    except RulesError as e:
        print(e, file=sys.stderr)
        return 2
    return 0


def import_rules(path: Path, bucket: str) -> int:
    from addon.convert import ConversionError, checked_rules_json, website_to_rules

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
    from addon.convert import bucket_rules, rules_to_oss_xml
    from addon.rules import MAX_RULES_CEILING, load_rules

    xml, warnings = rules_to_oss_xml(bucket_rules(load_rules(path, MAX_RULES_CEILING), bucket))
    warn(path, warnings)
    sys.stdout.write(xml)
    return 0


def print_backfill(ledger: Path, endpoint: str) -> int:
    """One `s3://bucket/key` line per key still to copy, for a migration tool's list."""
    from addon import ledger as miss_ledger
    from addon.writeback import make_s3_client

    try:
        missing = miss_ledger.backfill(ledger, miss_ledger.store_checker(make_s3_client(endpoint)))
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


if __name__ == "__main__":
    sys.exit(main())
