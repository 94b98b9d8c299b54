"""Origin clients (s3.clients.foreign_s3_client) for an S3 origin whose MirrorURL has the bucket in
its host (https://${bucket}.HOST/: rules.targets.OriginBucket): each request goes to, and is signed
for, BUCKET.HOST of the bucket it names, a name with dots too (botocore's own virtual-hosted
addressing would fall back to the bare HOST). Checked on the request botocore is about to send (no
name under 127.0.0.0/8 resolves here; the path-style form runs end to end in
tests/e2e/test_writethrough_patterns.py)."""

from __future__ import annotations

import re

import pytest
from botocore.auth import S3SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from backorigin.s3.clients import foreign_s3_client

KEYS = ("OLDKEY", "old-secret")


class Sent(Exception):
    """The request as it would go on the wire (raised instead of sending it)."""

    def __init__(self, request: AWSRequest) -> None:
        super().__init__(request.url)
        self.request = request


def sent(endpoint: str, call: str, **params: str) -> AWSRequest:
    client = foreign_s3_client(endpoint, "us-east-1", KEYS, attempts=1)

    def stop(request: AWSRequest, **_: object) -> None:
        raise Sent(request)

    client.meta.events.register("before-send.s3", stop)
    with pytest.raises(Sent) as caught:
        getattr(client, call)(**params)
    return caught.value.request


def signature_for(request: AWSRequest) -> str:
    """The SigV4 signature of the request as it is sent (its URL's host and path), recomputed."""
    signed = re.search(r"SignedHeaders=([^,]+)", request.headers["Authorization"].decode())
    assert signed is not None and "host" in signed.group(1).split(";")
    headers = {name: request.headers[name].decode() for name in signed.group(1).split(";") if name != "host"}
    again = AWSRequest(method=request.method, url=request.url, headers=headers, data=request.body)
    again.context["timestamp"] = headers["x-amz-date"]
    auth = S3SigV4Auth(Credentials(*KEYS), "s3", "us-east-1")
    return auth.signature(auth.string_to_sign(again, auth.canonical_request(again)), again)


@pytest.mark.parametrize(("bucket", "call", "params", "url"), [
    ("logs-a", "head_object", {"Key": "dir/a b"}, "http://logs-a.old.test:8333/dir/a%20b"),
    ("logs.a.b", "put_object", {"Key": "k", "Body": "x"}, "http://logs.a.b.old.test:8333/k"),
    ("logs-c", "list_objects_v2", {"Prefix": "p/"}, "http://logs-c.old.test:8333/?list-type=2&prefix=p%2F&encoding-type=url"),
])
def test_the_bucket_goes_into_the_host_and_is_signed_there(bucket, call, params, url):
    request = sent("http://${bucket}.old.test:8333", call, Bucket=bucket, **params)
    assert request.url == url
    claimed = re.search(r"Signature=([0-9a-f]+)", request.headers["Authorization"].decode())
    assert claimed is not None and claimed.group(1) == signature_for(request)


def test_a_path_style_origin_is_asked_as_before():
    assert sent("http://old.test:8333", "head_object", Bucket="logs-a", Key="k").url == "http://old.test:8333/logs-a/k"
