"""Bucket entries that stand for many buckets: an entry's Name is a bucket's name, or a pattern,
"*" (every bucket) or a prefix ending in "*" ("logs-*"); and MirrorURL / MirrorURLSlave may
contain `${bucket}`, the name of the bucket a request is for. Pure.

Which entry applies to a bucket: the entry of its exact name, else the pattern with the longest
prefix that the name starts with. A pattern applies only to a name S3's naming rules allow (3 to 63
characters of a-z, 0-9, '.' and '-', starting and ending with a letter or digit, no '..', not an
IP address), so what `${bucket}` puts into a URL is always safe there, in its path or as the first
label of a host whose domain the rule fixes (`${bucket}.DOMAIN`); nowhere else in a host, where the
name a client sends would choose the origin's host (loopback, link-local, any name).
Looking an entry up costs at most one dictionary look-up per distinct prefix length (at most 63),
whatever the number of entries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

from backorigin.s3.addressing import BUCKET_PLACEHOLDER

# What validation puts in for ${bucket} to check the URL around it.
SAMPLE_BUCKET = "bucket"
_BUCKET_NAME = re.compile(r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]")
_IPV4_LIKE = re.compile(r"\d{1,3}(?:\.\d{1,3}){3}")
_PATTERN_PREFIX = re.compile(r"[a-z0-9][a-z0-9.-]{0,61}")
_PLACEHOLDER = re.compile(r"\$\{[^}]*\}?")


def is_bucket_name(name: str) -> bool:
    """Whether S3's naming rules allow `name` for a bucket (the rules that keep it safe in a URL)."""
    return bool(_BUCKET_NAME.fullmatch(name)) and ".." not in name and not _IPV4_LIKE.fullmatch(name)


def pattern_prefix(name: str) -> str | None:
    """The prefix of a pattern entry's Name ("logs-*" -> "logs-", "*" -> ""); None for a bucket's
    own name. ValueError for a '*' anywhere but at the end, or a prefix no bucket name can start with."""
    if "*" not in name:
        return None
    prefix = name[:-1]
    if not name.endswith("*") or "*" in prefix:
        raise ValueError(f"{name!r}: a pattern is \"*\" or a prefix ending in \"*\" (like \"logs-*\"); '*' goes only at the end")
    if prefix and not _PATTERN_PREFIX.fullmatch(prefix):
        raise ValueError(f"{name!r}: no bucket name starts with {prefix!r} (bucket names are a-z, 0-9, '.' and '-', "
                         "starting with a letter or digit)")
    return prefix


def check_placeholders(url: str, allowed: bool = True) -> str:
    """The URL with ${bucket} (when `allowed`) filled in with a sample name, for checking the URL
    around it; ValueError for any other ${...} (a typo would otherwise reach the origin as is)."""
    for found in _PLACEHOLDER.findall(url):
        if found != BUCKET_PLACEHOLDER or not allowed:
            why = "only MirrorURL and MirrorURLSlave take ${bucket}" if found == BUCKET_PLACEHOLDER else "the one placeholder is ${bucket}"
            raise ValueError(f"{url!r}: {found!r}: {why}")
    host = url.partition("://")[2].split("/", 1)[0]
    first, dot, domain = host.partition(".")
    if BUCKET_PLACEHOLDER in host and (first != BUCKET_PLACEHOLDER or not dot or BUCKET_PLACEHOLDER in domain
                                       or not domain.split(":")[0].strip(".")):
        raise ValueError(f"{url!r}: ${{bucket}} goes in the host only as its whole first label before a fixed domain "
                         "(http(s)://${bucket}.DOMAIN[:PORT]/), or in the path: the bucket a client names must not "
                         "choose the origin's host")
    return fill_in(url, SAMPLE_BUCKET)


def fill_in(url: str, bucket: str) -> str:
    return url.replace(BUCKET_PLACEHOLDER, bucket)



class PatternIndex:
    """Pattern entries by prefix: the longest prefix a bucket name starts with wins."""

    def __init__(self, names: Iterable[str]) -> None:
        self._by_prefix: dict[str, str] = {}
        for name in names:
            prefix = pattern_prefix(name)
            assert prefix is not None, f"{name!r} is not a pattern"
            self._by_prefix[prefix] = name
        self._lengths = sorted({len(prefix) for prefix in self._by_prefix}, reverse=True)

    def __bool__(self) -> bool:
        return bool(self._by_prefix)

    def find(self, bucket: str) -> str | None:
        """The Name of the pattern entry that applies to `bucket`; None when none does (or when
        `bucket` is not a name S3 allows)."""
        if not self._by_prefix or not is_bucket_name(bucket):
            return None
        for length in self._lengths:
            if length <= len(bucket) and (name := self._by_prefix.get(bucket[:length])) is not None:
                return name
        return None
