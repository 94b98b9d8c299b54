"""The spool's size, counted in the scrape's own thread while the event loop lands write-backs."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from backorigin.ui import metrics


def test_a_file_that_goes_while_the_spool_is_counted_counts_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "kept").write_bytes(b"x" * 10)
    (tmp_path / "landed").write_bytes(b"y" * 1000)
    entries = list(os.scandir(tmp_path))  # listed before the write-back landed and removed its body
    (tmp_path / "landed").unlink()
    monkeypatch.setattr(metrics.os, "scandir", lambda directory: iter(entries))
    assert metrics.spool_bytes(tmp_path) == 10
