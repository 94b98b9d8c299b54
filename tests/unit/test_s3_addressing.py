"""S3 addressing: what kind of call a request is (which bucket and key it names: test_s3_reading.py)."""

from __future__ import annotations

import pytest
from mitmproxy.test import tutils

from backorigin.s3.addressing import (
    WriteKind,
    is_plain_object_call,
    is_store_parameter,
    write_kind,
)


def request(path: str, method: str = "GET", host: str = "store", **kwargs):
    return tutils.treq(path=path.encode(), method=method.encode(), host=host, **kwargs)


def test_subresources_are_not_plain_object_calls():
    assert is_plain_object_call(request("/b/k?response-content-type=text/plain"))
    for sub in ("acl", "tagging", "uploadId=1", "versionId=2", "partNumber=1", "torrent"):
        assert not is_plain_object_call(request(f"/b/k?{sub}"))


@pytest.mark.parametrize("method, path, kind", [
    ("GET", "/b/k", None), ("HEAD", "/b/k", None), ("DELETE", "/b/k", WriteKind.DELETE),
    ("DELETE", "/b/k?tagging", None), ("POST", "/b?delete", WriteKind.DELETE_MANY), ("PUT", "/b/k", WriteKind.CREATE),
    ("PUT", "/b/k?acl", None), ("POST", "/b/k?uploadId=1", WriteKind.CREATE), ("POST", "/b/k?uploads", None),
    ("DELETE", "/b/k?versionId=null", WriteKind.DELETE_VERSION),
    ("DELETE", "/b/k?versionId=v1&x-id=DeleteObject", WriteKind.DELETE_VERSION),
    ("DELETE", "/b/k?versionId=v1&tagging", None),
])
def test_what_a_write_does_to_objects(method, path, kind):
    assert write_kind(request(path, method)) is kind


@pytest.mark.parametrize("name, store_only", [
    ("X-Amz-Signature", True), ("x-amz-credential", True), ("Signature", True), ("OSSAccessKeyId", True),
    ("AWSAccessKeyId", True), ("Expires", True), ("security-token", True), ("x-id", True),
    ("response-content-type", False), ("versionId", False), ("a", False),
])
def test_parameters_of_the_clients_exchange_with_the_store(name, store_only):
    assert is_store_parameter(name) is store_only
