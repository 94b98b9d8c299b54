"""Rules files: read, validated by the model (backorigin.rules.model), and every error worded
so that it names the file, the bucket, the RuleNumber and the field, and a bad edit is found at once."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from backorigin.rules import writethrough
from backorigin.rules.buckets import SAMPLE_BUCKET, pattern_prefix
from backorigin.rules.model import (
    DEFAULT_MAX_RULES,
    MAX_RULES_CEILING,
    RoutingRule,
    RuleBook,
    RulesDocument,
    RulesError,
)
from backorigin.rules.values import oss_integer
from backorigin.rules.vocabulary import UNSUPPORTED_OSS_FIELDS


def load_rules(path: str | Path, max_rules: int = DEFAULT_MAX_RULES) -> RuleBook:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise RulesError(f"{path}: cannot read the rules file: {e.strerror or e}") from e
    except UnicodeDecodeError as e:
        raise RulesError(f"{path}: byte {e.start}: the rules file is not UTF-8 text") from None
    return parse_rules(text, str(path), max_rules)


def read_json(text: str) -> Any:
    """json.loads whose every failure is a ValueError saying where and why."""
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"line {e.lineno} column {e.colno}: invalid JSON: {e.msg}") from None
    except (RecursionError, ValueError) as e:  # nesting too deep, an integer too long to convert
        raise ValueError(f"unusable JSON: {e}") from None


def parse_rules(text: str, source: str, max_rules: int = DEFAULT_MAX_RULES) -> RuleBook:
    try:
        raw = read_json(text)
    except ValueError as e:
        raise RulesError(f"{source}: {e}") from None
    try:
        document = RulesDocument.model_validate_json(text)
    except ValidationError as e:
        raise RulesError(
            "\n".join(_describe_error(source, raw, err) for err in e.errors())
        ) from None

    buckets: dict[str, tuple[RoutingRule, ...]] = {}
    patterns: dict[str, tuple[RoutingRule, ...]] = {}
    write_through = set()
    for bucket in document.Buckets:
        where = f'{source}: bucket "{bucket.Name}"'
        if bucket.Name in buckets or bucket.Name in patterns:
            raise RulesError(f"{where}: the bucket is listed twice; merge its RoutingRules")
        if len(bucket.RoutingRules) > max_rules:
            raise RulesError(
                f"{where}: field RoutingRules: {len(bucket.RoutingRules)} rules, "
                f"at most {max_rules} are allowed (backorigin_max_rules raises the limit "
                f"up to {MAX_RULES_CEILING})"
            )
        numbers = [r.RuleNumber for r in bucket.RoutingRules]
        repeated = sorted({n for n in numbers if numbers.count(n) > 1})
        if repeated:
            raise RulesError(f"{where}: RuleNumber {repeated[0]}: field RuleNumber: used by more than one rule")
        rules = tuple(sorted(bucket.RoutingRules, key=lambda r: r.RuleNumber))
        pattern = pattern_prefix(bucket.Name) is not None
        if pattern:
            patterns[bucket.Name] = rules
        else:
            buckets[bucket.Name] = rules = tuple(rule.for_bucket(bucket.Name) for rule in rules)
        if bucket.WriteThrough:  # a pattern's rules are checked as they apply to a bucket
            if why := writethrough.refusal(tuple(r.for_bucket(SAMPLE_BUCKET) for r in rules) if pattern else rules):
                raise RulesError(f"{where}: {why}")
            write_through.add(bucket.Name)
    return RuleBook(source=source, buckets=buckets, patterns=patterns, write_through=frozenset(write_through))


def _describe_error(source: str, raw: Any, err: Mapping[str, Any]) -> str:
    """Turn a pydantic error location into 'file: bucket "b": RuleNumber n: field F.G: why'."""
    loc = list(err["loc"])
    where = [source]
    field: list[str] = []
    node = raw
    for i, step in enumerate(loc):
        parent = loc[i - 1] if i else None
        if isinstance(step, int) and parent == "Buckets":
            name = _get(node, step, "Name")
            where.append(f'bucket "{name}"' if isinstance(name, str) else f"bucket #{step + 1}")
        elif isinstance(step, int) and parent == "RoutingRules":
            where.append(_rule_label(_get(node, step, "RuleNumber"), step + 1))
        elif isinstance(step, int):
            field.append(f"[{step}]")
        elif step not in ("Buckets", "RoutingRules") or i == len(loc) - 1:
            field.append(f".{step}" if field else str(step))
        node = node[step] if _has(node, step) else None
    message = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden" and loc[-1] in UNSUPPORTED_OSS_FIELDS:
        message = f"an OSS field backorigin deliberately does not support: {UNSUPPORTED_OSS_FIELDS[loc[-1]]}"
    elif err["type"] == "extra_forbidden":
        message = "unknown field (check its spelling against the OSS RoutingRule names)"
    label = f"field {''.join(field)}: " if field else ""
    return f"{': '.join(where)}: {label}{message}"


def _rule_label(number: Any, position: int) -> str:
    """'RuleNumber 3' when the rule's number can be read (3 or "3"), else its place in the list."""
    try:
        number = oss_integer(number)
    except ValueError:
        number = None
    if isinstance(number, int) and not isinstance(number, bool):
        return f"RuleNumber {number}"
    return f"rule #{position}"


def _has(node: Any, step: Any) -> bool:
    if isinstance(node, list):
        return isinstance(step, int) and 0 <= step < len(node)
    return isinstance(node, dict) and step in node


def _get(node: Any, index: int, name: str) -> Any:
    item = node[index] if _has(node, index) else None
    return item.get(name) if isinstance(item, dict) else None
