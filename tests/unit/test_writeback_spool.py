"""The spool: manifests written after their bodies, and what a write-back stores."""

from __future__ import annotations

import json

from backorigin.writeback.spool import ObjectUpload, Spool

UPLOAD = ObjectUpload("http://s", "b", "k", {
    "content-type": "text/plain", "cache-control": "no-cache", "expires": "Wed, 21 Oct 2037 07:28:00 GMT",
    "access-control-allow-origin": "*"}, {"backorigin-origin-url": "http://o/k", "access-control-allow-origin": "*"},
    4, "jXd/OF09/siBXSD3SWAm3A==")


def test_put_arguments_are_create_only_with_headers_and_metadata():
    args = UPLOAD.put_arguments(b"data")
    assert args["IfNoneMatch"] == "*" and args["StorageClass"] == "STANDARD"
    assert args["ContentType"] == "text/plain" and args["CacheControl"] == "no-cache"
    assert args["Expires"].year == 2037
    assert args["Metadata"] == {"backorigin-origin-url": "http://o/k", "access-control-allow-origin": "*"}
    assert args["ContentMD5"] == "jXd/OF09/siBXSD3SWAm3A=="


def test_unparsable_expires_is_left_out():
    assert "Expires" not in ObjectUpload("http://s", "b", "k", {"expires": "0"}, {}, 0, "").object_arguments()


def test_a_spooled_body_has_its_manifest_and_leftovers_are_cleared(tmp_path):
    spool = Spool(tmp_path / "spool")
    download = spool.new_body_path()
    download.write_bytes(b"data")
    manifest = spool.add(UPLOAD, download)
    assert spool.body_of(manifest).read_bytes() == b"data" and not download.exists()
    assert json.loads(manifest.read_text())["key"] == "k"
    assert [(m, u.where) for m, u in spool.pending()] == [(manifest, "s3://b/k")]
    half = spool.new_body_path()
    half.write_bytes(b"half")
    spool.clear_downloads()
    assert not half.exists() and manifest.exists()
    spool.keep_failed(manifest)
    assert list(spool.pending()) == [] and (spool.failed / manifest.name).exists()
