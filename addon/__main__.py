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

    args = parser.parse_args(argv)
    try:
        if args.command == "demo":
            from addon.demo import run_demo

            return run_demo(args.rules, args.state, args.proxy_port, args.store_port, args.origin_port, args.ui)
    except RulesError as e:
        print(e, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
