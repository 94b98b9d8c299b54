"""The upload's pieces that stand alone: a part of the spool file as a stream of its own."""

from __future__ import annotations

import base64
import hashlib
import io

from backorigin.writeback.upload import FilePart


def test_a_file_part_reads_seeks_and_hashes_only_its_own_bytes(tmp_path):
    body = bytes(range(256)) * 40
    path = tmp_path / "body"
    path.write_bytes(body)
    with open(path, "rb") as file:
        part = FilePart(file, 1000, 3000)
        assert len(part) == 3000 and part.md5_base64() == base64.b64encode(hashlib.md5(body[1000:4000]).digest()).decode()
        assert part.tell() == 0 and part.read(10) == body[1000:1010] and part.tell() == 10
        assert part.read() == body[1010:4000] and part.read(5) == b""
        assert part.seek(-5, io.SEEK_END) == 2995 and part.read() == body[3995:4000]
        part.seek(0)
        other = FilePart(file, 0, 10)
        assert other.read() == body[:10] and part.read(4) == body[1000:1004]  # each keeps its own place
        buffer = bytearray(8)
        assert part.readinto(buffer) == 8 and bytes(buffer) == body[1004:1012]
