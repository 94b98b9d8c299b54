"""MkDocs hook: pages in docs/ that mkdocs.yml's nav does not name go under "More topics", so a
page added by itself (docs/<topic>.md) is on the site without editing the nav."""

from __future__ import annotations

from pathlib import Path
from typing import Any

SECTION = "More topics"


def _named(nav: Any) -> set[str]:
    if isinstance(nav, str):
        return {nav}
    if isinstance(nav, list):
        return set().union(*(_named(item) for item in nav)) if nav else set()
    if isinstance(nav, dict):
        return set().union(*(_named(value) for value in nav.values())) if nav else set()
    return set()


def on_config(config: Any) -> Any:
    docs = Path(config["docs_dir"])
    named = _named(config["nav"])
    extra = sorted(str(p.relative_to(docs)) for p in docs.glob("*.md") if str(p.relative_to(docs)) not in named)
    if extra:
        config["nav"].append({SECTION: extra})
    return config
