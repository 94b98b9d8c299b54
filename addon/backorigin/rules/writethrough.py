"""WriteThrough, a bucket entry's field of backorigin's own (OSS has none): every write the store
accepts through the proxy is applied to the bucket's S3 origin too (backorigin.writethrough).
Which buckets may have it, and where a key's copy lives at the origin. Pure.

A bucket with WriteThrough has Mirror rules, and every one of them reads an S3 bucket (MirrorURL
http(s)://HOST[:PORT]/BUCKET/[PREFIX/], or http(s)://${bucket}.HOST[:PORT]/[PREFIX/]; no key
rewriting, no MirrorHost: rules.targets.OriginBucket), signs with MirrorAuth (its writes are signed
with it too), and has no IncludeHeader condition (a write is not a GET whose headers could match
it). A key's copy is where the first Mirror rule covering it (rules.plan.covering_mirror) reads it:
the origin's bucket, under its prefix + the key. A key no Mirror rule covers is not the origin's,
and is not written through. A pattern entry ("logs-*", "*") with WriteThrough writes through for
every bucket it applies to, each to the origin its rules name for that bucket (${bucket} filled in).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from backorigin.rules.buckets import SAMPLE_BUCKET, fill_in
from backorigin.rules.model import RoutingRule, RuleBook
from backorigin.rules.plan import covering_mirror
from backorigin.rules.targets import NotAnS3Origin, OriginBucket
from backorigin.s3.addressing import ObjectRef, host_bucket_base


@dataclass(frozen=True)
class OriginCopy:
    """Where a key's copy lives at an S3 origin, and the MirrorAuth key that signs for it (its secret
    is never written down with it: the rules hold it)."""

    endpoint: str
    bucket: str
    key: str
    region: str = "us-east-1"
    access_key_id: str = ""  # "": the origin is public (verify reads it unsigned)

    @property
    def server(self) -> str:
        """Where its requests go: the endpoint, the bucket's own host when the bucket is in the host."""
        return fill_in(self.endpoint, self.bucket)

    @property
    def where(self) -> str:
        if host_bucket_base(self.endpoint) is not None:
            return f"{self.server}/{self.key}"
        return f"{self.endpoint}/{self.bucket}/{self.key}"


def refusal(rules: Sequence[RoutingRule]) -> str | None:
    """Why a bucket with these rules cannot have WriteThrough, naming the rule and the field to
    change (None: it can)."""
    mirrors = [rule for rule in rules if rule.Redirect.is_mirror]
    if not mirrors:
        return "field WriteThrough: the bucket has no Mirror rule; write-through writes to its Mirror rules' S3 origins"
    for rule in mirrors:
        action, place = rule.Redirect, f"RuleNumber {rule.RuleNumber}: field"
        if action.ReplaceKeyWith is not None or action.EnableReplacePrefix:
            name = "ReplaceKeyWith" if action.ReplaceKeyWith is not None else "ReplaceKeyPrefixWith"
            return f"{place} Redirect.{name}: not with the bucket's WriteThrough: a write's key must be the origin's key"
        if action.MirrorHost is not None:
            return f"{place} Redirect.MirrorHost: not with the bucket's WriteThrough: its S3 endpoint is MirrorURL's host"
        try:
            OriginBucket.of(rule)
        except NotAnS3Origin:
            return (f"{place} Redirect.MirrorURL: the bucket's WriteThrough needs an S3 origin, "
                    f"http(s)://HOST[:PORT]/BUCKET/[PREFIX/] or http(s)://${{bucket}}.HOST[:PORT]/[PREFIX/], not "
                    f"{action.mirror_url_template}")
        if action.MirrorAuth is None:
            return f"{place} Redirect.MirrorAuth: required by the bucket's WriteThrough: its writes to the origin are signed with it"
        if rule.Condition.IncludeHeader:
            return (f"{place} Condition.IncludeHeader: not with the bucket's WriteThrough: a write cannot be matched to a "
                    "GET's header conditions")
    return None


def origin_copy(book: RuleBook, ref: ObjectRef, written_through: bool = True) -> OriginCopy | None:
    """Where the key's copy lives at its S3 origin: None when no Mirror rule covers it, or, with
    `written_through`, when its bucket has no WriteThrough. NotAnS3Origin when the covering rule's
    origin is not an S3 bucket (never for a bucket with WriteThrough: it was refused)."""
    if written_through and not book.writes_through(ref.bucket):
        return None
    rule = covering_mirror(book, ref)
    if rule is None:
        return None
    origin, auth = OriginBucket.of(rule), rule.Redirect.MirrorAuth
    if auth is None:
        return OriginCopy(origin.endpoint, origin.bucket, origin.base + ref.key)
    return OriginCopy(origin.endpoint, origin.bucket, origin.base + ref.key, auth.Region, auth.AccessKeyId)


def secrets(book: RuleBook) -> dict[tuple[str, str], str]:
    """The MirrorAuth secret of each (S3 origin endpoint, AccessKeyId) the rules name: what the
    write-through worker signs with, for the buckets with WriteThrough and for writes journaled
    before a bucket's WriteThrough was turned off (they are applied all the same). A pattern
    entry's endpoint is the one its rules name for every bucket: a host with ${bucket} in it keeps
    it (OriginBucket), and the worker fills it in with each change's own bucket."""
    found = {}
    for name, rules in book.entries():
        for rule in rules:
            if rule.Redirect.is_mirror and (auth := rule.Redirect.MirrorAuth) is not None:
                try:
                    endpoint = OriginBucket.of(rule.for_bucket(SAMPLE_BUCKET) if name in book.patterns else rule).endpoint
                except NotAnS3Origin:
                    continue
                found[(endpoint, auth.AccessKeyId)] = auth.AccessKeySecret.get_secret_value()
    return found
