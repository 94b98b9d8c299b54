"""S3 addressing: which bucket and object a request names, and what kind of call it is."""

from __future__ import annotations

import pytest
from mitmproxy.test import tutils

from backorigin.s3.addressing import (
    ObjectRef,
    WriteKind,
    bucket_of,
    is_plain_object_call,
    is_store_parameter,
    object_ref,
    target,
    virtual_host_bucket,
    write_kind,
)


def request(path: str, method: str = "GET", host: str = "store", **kwargs):
    return tutils.treq(path=path.encode(), method=method.encode(), host=host, **kwargs)


@pytest.mark.parametrize(
    "path, expected",
    [
        ("/photos/a/b.jpg", ObjectRef("photos", "a/b.jpg")),
        ("/photos/a%20b%2Bc%E4%B8%AD", ObjectRef("photos", "a b+c\u4e2d")),
        ("/photos//lead", ObjectRef("photos", "/lead")),
        ("/photos/k?acl", ObjectRef("photos", "k")),
        ("/photos/", None),
        ("/photos", None),
        ("/", None),
    ],
)
def test_object_ref_is_path_style_and_percent_decoded(path, expected):
    assert object_ref(request(path)) == expected


def test_virtual_hosted_names_are_read_for_the_given_domains_only():
    assert virtual_host_bucket("Photos.S3.Test.", ["s3.test"]) == ("photos", "s3.test")
    assert virtual_host_bucket("s3.test", ["s3.test"]) is None
    vhost = request("/a%20b", headers=((b"host", b"photos.s3.test"),))
    assert object_ref(vhost, ["s3.test"]) == ObjectRef("photos", "a b")
    assert object_ref(vhost) is None  # without the domain, /a%20b is a bucket call
    assert target(request("/", headers=((b"host", b"photos.s3.test"),)), ["s3.test"]) == ObjectRef("photos", "")
    assert bucket_of(request("/photos?delete")) == "photos" and bucket_of(request("/")) is None


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
