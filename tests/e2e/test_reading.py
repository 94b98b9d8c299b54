"""The differential suite of issue 25: the proxy acts only on what the store acted on.

A SeaweedFS that answers virtual-hosted names (`-s3.domainName=s3.test`), with per-bucket
identities (anonymous may read pub, a user may write mine, an admin anything), every bucket under
a Mirror rule (priv's origin private, with MirrorAuth); the store direct and behind an nginx
front; the documented reverse proxy in front of each, over HTTP/1.1 and HTTP/2 (TLS). Hypothesis
generates Host spellings (case, trailing dot, port, virtual-hosted and path-style, unknown names),
keys (plain, nested, `//`, `\\`, `%2F` in the bucket, bytes that are not UTF-8) x GET, HEAD, PUT,
DELETE, POST ?delete x signed (user, admin) and anonymous. For each case:

- GET/HEAD: the same request (as a GET) straight to the store says which bucket and key it reads
  (the object's body, or the error's BucketName and Key) and its status. The origin's log says
  which (bucket, key) the proxy fetched: only ever the store's, only on its 404, and always so
  when the Host is a known one spelled plainly. A request the proxy did not act on is answered as
  the store answers it.
- DELETE, POST ?delete: every object the store could read is there first; the tombstones the
  proxy left are among the objects the store deleted (all of them, for a plain Host).
- PUT: every such object has a tombstone first; those the proxy cleared are among the objects the
  store created (all of them, for a plain Host).
- At the end: every object the proxy fetched is stored (its key UTF-8) where the store read it, with
  the origin's bytes, and no fill lands anywhere else.

The seed is printed on failure (BACKORIGIN_READING_SEED=N runs it again); CASES per set-up.
"""

from __future__ import annotations

import itertools
import os
import random
import ssl
import time
import uuid
from dataclasses import dataclass, replace
from urllib.parse import quote, unquote

import httpx
import pytest
from hypothesis import HealthCheck, Phase, given, note, seed, settings
from hypothesis import strategies as st

from backorigin.tools.embedded_store import free_ports
from tests.modes_support import ModeMitmdump
from tests.origin_server import ScriptedOrigin, body_for
from tests.reading_support import (
    ADMIN,
    BUCKETS,
    DOMAIN,
    IDENTITIES,
    Nginx,
    StoreRead,
    Tally,
    all_tombstones,
    normalized,
    origin_object,
    signed,
    start_store,
    store_read,
    tombstoned,
)
from tests.support import mirror_rule, stored, wait_for, write_rules

CASES = int(os.environ.get("BACKORIGIN_READING_CASES", "130"))  # per set-up; four set-ups
SEED = int(os.environ.get("BACKORIGIN_READING_SEED") or random.SystemRandom().randrange(1 << 32))
SPELLINGS = ("plain", "upper", "capital", "dot", "upper-dot")
SHAPES = ("plain", "nested", "slashes", "backslash", "slash-in-bucket", "not-utf8")
_count = itertools.count()


@dataclass(frozen=True)
class Case:
    method: str
    identity: str
    style: str  # path, vhost, unknown
    base: str  # the Host's name before spelling
    spelling: str
    port: str
    path_bucket: str
    shape: str
    vhost_root: bool  # POST ?delete on a virtual-hosted name: "/?delete" (else "/BUCKET?delete")
    stored_first: str | None  # GET/HEAD: a bucket that has the object the path-style reading names

    @property
    def host(self) -> str:
        name = {"plain": self.base, "upper": self.base.upper(), "capital": self.base.capitalize(),
                "dot": self.base + ".", "upper-dot": self.base.upper() + "."}[self.spelling]
        return name + self.port

    @property
    def plain(self) -> bool:
        """A known Host spelled plainly and a key every store reads alike: the proxy must act."""
        bucket_call = self.method != "POST" or self.style != "vhost" or self.vhost_root  # SeaweedFS: POST /KEY?delete too
        return self.style != "unknown" and self.spelling == "plain" and self.shape in ("plain", "nested", "not-utf8") and bucket_call


@st.composite
def cases(draw, proxy_port: int) -> Case:
    method = draw(st.sampled_from(["GET", "HEAD", "PUT", "DELETE", "POST"]))
    style = draw(st.sampled_from(["path", "path", "vhost", "vhost", "unknown"]))
    host_bucket = draw(st.sampled_from(BUCKETS))
    base = {"path": draw(st.sampled_from(["127.0.0.1", "localhost", DOMAIN])), "vhost": f"{host_bucket}.{DOMAIN}",
            "unknown": draw(st.sampled_from(["attacker.example", f"{host_bucket}.other.test"]))}[style]
    shapes = ("plain",) * 3 + ("nested",) + (SHAPES[2:] if method in ("GET", "HEAD") else SHAPES[2:-1])  # not UTF-8: boto3 cannot put it
    return Case(
        method=method, identity=draw(st.sampled_from(list(IDENTITIES))), style=style, base=base,
        spelling=draw(st.sampled_from(("plain",) * 4 + SPELLINGS[1:])), port=draw(st.sampled_from(["", f":{proxy_port}", ":1234"])),
        path_bucket=draw(st.sampled_from(BUCKETS)), shape=draw(st.sampled_from(shapes)), vhost_root=draw(st.booleans()),
        stored_first=draw(st.sampled_from([None, None, *BUCKETS])) if method in ("GET", "HEAD") else None,
    )


def target_of(case: Case, cid: str) -> str:
    bucket = case.path_bucket
    if case.method == "POST":
        return "/?delete" if case.style == "vhost" and case.vhost_root else f"/{bucket}?delete"
    return {"plain": f"/{bucket}/{cid}", "nested": f"/{bucket}/{cid}/a/b", "slashes": f"/{bucket}/{cid}//k",
            "backslash": f"/{bucket}/{cid}%5Ck", "slash-in-bucket": f"/{bucket}%2F{cid}/k",
            "not-utf8": f"/{bucket}/{cid}/%FF%FE"}[case.shape]


def candidates(case: Case, cid: str) -> set[tuple[str, str]]:
    """Every object a store could read from the case's target, in each bucket: path-style (the first
    segment is the bucket) and virtual-hosted (the whole path is the key), as SeaweedFS stores them."""
    whole = unquote(target_of(replace(case, method="PUT"), cid)[1:])
    keys = {normalized(whole), normalized(whole.partition("/")[2])}
    return {(bucket, key) for bucket in BUCKETS for key in keys if key}


class _H2First(ssl.SSLContext):
    """TLS offering h2 first, as curl and Go do (httpx offers http/1.1 first, which mitmproxy takes;
    offered h2 alone, mitmproxy 11 reads the connection as HTTP/1)."""

    def set_alpn_protocols(self, alpn_protocols) -> None:
        super().set_alpn_protocols(["h2", "http/1.1"])


def h2_first(ca: str) -> ssl.SSLContext:
    context = _H2First(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(ca)
    return context


class World:
    def __init__(self, store, nginx: Nginx, origin: ScriptedOrigin, proxies: dict[str, ModeMitmdump]) -> None:
        self.store, self.nginx, self.origin, self.proxies = store, nginx, origin, proxies
        self.admin = store.client()
        self.direct = {front: httpx.Client(base_url=self.store_url(front), timeout=30) for front in ("direct", "nginx")}
        self.fetched: dict[tuple[str, str], str] = {}  # (bucket, key) -> the origin path asked, in every set-up
        self.tombstoned_before: set[tuple[str, str]] = set()  # checked by an earlier set-up on the same proxy

    def store_url(self, front: str) -> str:
        return self.store.endpoint if front == "direct" else f"http://127.0.0.1:{self.nginx.port}"


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    work = tmp_path_factory.mktemp("reading")
    store = start_store(work / "store")
    nginx = Nginx(work / "nginx", store.s3_port).start()
    origin = ScriptedOrigin().start()
    rules = write_rules(work / "rules.json", {
        "pub": [mirror_rule(1, f"{origin.base}/pub/")],
        "priv": [mirror_rule(1, f"{origin.base}/priv/", MirrorAuth={
            "AuthType": "S3V4", "Region": "us-east-1", "AccessKeyId": "ORIGINKEY", "AccessKeySecret": "originsecret"})],
        "mine": [mirror_rule(1, f"{origin.base}/mine/")],
    })
    proxies: dict[str, ModeMitmdump] = {}
    try:
        for front, url in (("direct", store.endpoint), ("nginx", f"http://127.0.0.1:{nginx.port}")):
            proxies[front] = proxy = ModeMitmdump(
                f"reverse:{url}", rules, work / f"proxy-{front}",
                {"keep_host_header": "true", "backorigin_vhost_domains": DOMAIN, "backorigin_origin_404_ttl": "0",
                 "backorigin_metrics_port": str(free_ports(1)[0])},
                env={"AWS_ACCESS_KEY_ID": ADMIN[0], "AWS_SECRET_ACCESS_KEY": ADMIN[1], "AWS_DEFAULT_REGION": "us-east-1"},
            )
            proxy.start()
        # the operator named no vhost domain, while the store answers virtual-hosted names
        proxies["no-vhost"] = ModeMitmdump(
            f"reverse:{store.endpoint}", rules, work / "proxy-no-vhost", {"keep_host_header": "true"},
            env={"AWS_ACCESS_KEY_ID": ADMIN[0], "AWS_SECRET_ACCESS_KEY": ADMIN[1], "AWS_DEFAULT_REGION": "us-east-1"})
        proxies["no-vhost"].start()
        yield World(store, nginx, origin, proxies)
    finally:
        for proxy in proxies.values():
            proxy.stop()
        origin.stop()
        nginx.stop()
        store.stop()


def run_case(world: World, front: str, client: httpx.Client, proxy_url: str, case: Case, tally: Tally) -> None:
    proxy, direct = world.proxies[front], world.direct[front]
    cid = f"c{next(_count)}x{uuid.uuid4().hex[:8]}"
    note(f"case {cid}: {case} (Host {case.host!r}, target {target_of(case, cid)!r}); seed {SEED}")
    tally.cases += 1
    keys = IDENTITIES[case.identity]
    target = target_of(case, cid)
    started = time.monotonic()
    try:
        if case.method in ("GET", "HEAD"):
            _read_case(world, client, direct, proxy_url, case, cid, target, keys, tally)
        elif case.method in ("DELETE", "POST"):
            _delete_case(world, proxy, client, proxy_url, case, cid, target, keys, tally)
        else:
            _put_case(world, proxy, client, proxy_url, case, cid, target, keys, tally)
    finally:
        tally.seconds[case.method] = tally.seconds.get(case.method, 0.0) + time.monotonic() - started


def _read_case(world, client, direct, proxy_url, case, cid, target, keys, tally) -> None:
    if case.stored_first:
        path_key = normalized(target.split("/", 2)[2]) if "%2F" not in target else None
        if path_key and case.shape != "not-utf8":
            world.admin.put_object(Bucket=case.stored_first, Key=path_key, Body=f"stored:{case.stored_first}/{path_key}".encode())
    oracle = direct.get(target, headers=signed("GET", case.host, target, b"", keys))
    read = store_read(oracle.status_code, oracle.content)
    answer = client.request(case.method, proxy_url + target, headers=signed(case.method, case.host, target, b"", keys))
    fetched = {origin_object(r.path) for r in world.origin.requests_for(cid)}
    tally.versions.add(answer.http_version)
    note(f"the store read {read}; the proxy answered {answer.status_code} and fetched {fetched}")
    if fetched:
        tally.acted += 1
        # the store's XML shows each byte of a key that is not UTF-8 as U+FFFD
        assert read.status == 404 and {(b, as_xml(k)) for b, k in fetched} == {(read.bucket, read.key)}, (
            "the proxy fetched what the store did not read as missing")
        assert answer.status_code == 200
        for request in world.origin.requests_for(cid):
            world.fetched[origin_object(request.path)] = request.path
    else:
        if case.plain and read.status == 404 and read.bucket in BUCKETS:
            raise AssertionError("a miss the store read, under a rule, by a known Host spelled plainly, was not mirrored")
        assert answer.status_code == oracle.status_code, "a request the proxy did not act on is answered as the store answers it"
        tally.set_aside += not case.plain


def as_xml(key: str) -> str:
    return key.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _present(world, objects) -> set[tuple[str, str]]:
    return {(bucket, key) for bucket, key in objects if stored(world.admin, bucket, key) is not None}


def _delete_case(world, proxy, client, proxy_url, case, cid, target, keys, tally) -> None:
    objects = candidates(case, cid)
    for bucket, key in objects:
        world.admin.put_object(Bucket=bucket, Key=key, Body=b"there")
    body = b""
    if case.method == "POST":
        listed = sorted({key for _, key in objects})
        body = ("<Delete>" + "".join(f"<Object><Key>{key}</Key></Object>" for key in listed) + "</Delete>").encode()
    answer = client.request(case.method, proxy_url + target, headers=signed(case.method, case.host, target, body, keys), content=body)
    deleted = objects - _present(world, objects)
    marked = tombstoned(proxy.spool, objects)
    tally.may_be_tombstoned |= deleted
    note(f"the store deleted {deleted}; the proxy answered {answer.status_code} and left tombstones {marked}")
    assert marked <= deleted, "the proxy tombstoned what the store did not delete"
    if case.plain and deleted:
        assert marked == deleted, "a delete the store did, by a known Host spelled plainly, left no tombstone"
    tally.acted += bool(marked)


def _put_case(world, proxy, client, proxy_url, case, cid, target, keys, tally) -> None:
    objects = candidates(case, cid)
    own = f"127.0.0.1:{proxy.port}"
    for bucket, key in objects:  # each object the store could write gets a tombstone first
        path = f"/{bucket}/{quote(key)}"
        assert client.delete(proxy_url + path, headers=signed("DELETE", own, path, b"", ADMIN)).status_code == 204
    assert tombstoned(proxy.spool, objects) == objects
    tally.may_be_tombstoned |= objects
    body = f"put:{cid}".encode()
    answer = client.put(proxy_url + target, headers=signed("PUT", case.host, target, body, keys), content=body)
    created = _present(world, objects)
    cleared = objects - tombstoned(proxy.spool, objects)
    note(f"the store created {created}; the proxy answered {answer.status_code} and cleared tombstones {cleared}")
    assert cleared <= created, "the proxy cleared a tombstone of an object the store did not write"
    if case.plain and created:
        assert cleared == created, "a write the store did, by a known Host spelled plainly, kept its tombstone"
    tally.acted += bool(cleared)


def fills_landed_where_the_store_read(world: World, proxy: ModeMitmdump) -> None:
    """Every fetched object with a UTF-8 key is stored where the store read it, with the origin's
    bytes; no object with an origin's body is anywhere else."""
    wait_for(lambda: not list(proxy.spool.glob("*.json")), within=60)
    for (bucket, key), path in world.fetched.items():
        if key.encode("utf-8", "surrogateescape") != key.encode("utf-8", "replace"):
            continue  # not UTF-8: answered, never stored
        got = world.admin.get_object(Bucket=bucket, Key=key)["Body"].read()
        assert got == body_for(path.split("?", 1)[0]), (bucket, key)
    for bucket in BUCKETS:
        for page in world.admin.get_paginator("list_objects_v2").paginate(Bucket=bucket):
            for item in page.get("Contents", []):
                if (bucket, item["Key"]) in world.fetched:
                    continue
                head = world.admin.get_object(Bucket=bucket, Key=item["Key"], Range="bytes=0-15")["Body"].read()
                assert not head.startswith(b"origin body for"), f"a fill landed at {bucket}/{item['Key']}"


CONFIGS = [(front, protocol) for protocol in ("HTTP/1.1", "HTTP/2") for front in ("direct", "nginx")]


@pytest.mark.parametrize("front, protocol", CONFIGS)
def test_the_proxy_acts_only_on_what_the_store_acted_on(world, front, protocol, tmp_path):
    proxy = world.proxies[front]
    if protocol == "HTTP/2":
        client = httpx.Client(http2=True, verify=h2_first(str(proxy.client_ca)), timeout=30)
        proxy_url = f"https://127.0.0.1:{proxy.port}"
    else:
        client = httpx.Client(timeout=30)
        proxy_url = proxy.url
    tally = Tally()

    @seed(SEED + CONFIGS.index((front, protocol)))  # each set-up its own cases
    @settings(max_examples=CASES, deadline=None, database=None, phases=[Phase.generate, Phase.shrink],
              suppress_health_check=list(HealthCheck))
    @given(cases(proxy.port))
    def check(case: Case) -> None:
        run_case(world, front, client, proxy_url, case, tally)

    began = time.monotonic()
    try:
        check()
        tally.seconds["all cases"] = time.monotonic() - began
        assert tally.versions == {protocol}, "the client spoke another protocol with the proxy"
        fills_landed_where_the_store_read(world, proxy)
        ours = all_tombstones(proxy.spool)  # the proxy is this suite's alone
        assert ours <= tally.may_be_tombstoned | world.tombstoned_before, "a tombstone of what the store never deleted"
        world.tombstoned_before |= ours
        tally.seconds["fills checked"] = time.monotonic() - began
    except BaseException:
        print(f"\ntest_reading: seed {SEED} (BACKORIGIN_READING_SEED={SEED} runs these cases again)")
        raise
    finally:
        client.close()
    print(f"\n{front} {protocol}: {tally.cases} cases, {tally.acted} acted on, {tally.set_aside} set aside; seed {SEED}; "
          f"seconds {tally.seconds}")
    assert tally.acted >= tally.cases // 10  # the suite exercises what the proxy does, not only what it leaves alone


# the findings of issue 25, each as the issue tells it ------------------------------------------


def _through(world: World, method: str, host: str, target: str, keys=None, body: bytes = b"", proxy: str = "direct") -> httpx.Response:
    with httpx.Client(timeout=30) as client:
        return client.request(method, world.proxies[proxy].url + target, headers=signed(method, host, target, body, keys), content=body)


def test_a_virtual_hosted_name_the_operator_did_not_name_is_left_to_the_store(world):
    """The store answers virtual-hosted names, the proxy was told none: `curl -H 'Host: pub.s3.test'
    http://PROXY/priv/KEY` made the proxy fetch priv's private origin (the store read pub/priv/KEY),
    and a user's `DELETE /photos/k` with `Host: mine.s3.test` (the store deleted mine/photos/k)
    tombstoned photos/k. Now the unknown name is forwarded untouched."""
    cid = uuid.uuid4().hex[:10]
    direct = world.direct["direct"].get(f"/priv/{cid}", headers={"host": "pub.s3.test"})
    answer = _through(world, "GET", "pub.s3.test", f"/priv/{cid}", proxy="no-vhost")
    assert store_read(answer.status_code, answer.content) == store_read(direct.status_code, direct.content) == StoreRead(
        404, "pub", f"priv/{cid}")  # the store's own answer: it read pub/priv/KEY
    assert world.origin.requests_for(cid) == []
    world.admin.put_object(Bucket="mine", Key=f"photos/{cid}", Body=b"x")
    answer = _through(world, "DELETE", "mine.s3.test", f"/photos/{cid}", IDENTITIES["user"], proxy="no-vhost")
    assert answer.status_code == 204 and stored(world.admin, "mine", f"photos/{cid}") is None
    assert tombstoned(world.proxies["no-vhost"].spool, {("mine", f"photos/{cid}"), ("photos", cid)}) == set()
    assert "forwarded untouched (unknown-host): pub.s3.test" in world.proxies["no-vhost"].log()


def test_a_virtual_hosted_name_names_the_bucket_the_store_reads(world):
    """`curl -H 'Host: pub.s3.test' http://PROXY/priv/KEY`, anonymous: the store reads pub/priv/KEY
    (pub is public-read), so the proxy mirrors pub's origin into pub, never priv's private one."""
    cid = uuid.uuid4().hex[:10]
    answer = _through(world, "GET", "pub.s3.test", f"/priv/{cid}")
    assert answer.status_code == 200 and answer.content == body_for(f"/pub/priv/{cid}")
    assert [r.path for r in world.origin.requests_for(cid)] == [f"/pub/priv/{cid}"]
    assert "authorization" not in world.origin.requests_for(cid)[0].headers  # priv's MirrorAuth stays home
    wait_for(lambda: stored(world.admin, "pub", f"priv/{cid}"))
    assert stored(world.admin, "priv", cid) is None


@pytest.mark.parametrize("host", ["PRIV.S3.TEST.", "PRIV.S3.TEST", "priv.s3.test.", "Priv.s3.test"])
def test_a_spelling_stores_read_two_ways_is_left_to_the_store(world, host):
    """With backorigin_vhost_domains=s3.test, `Host: PRIV.S3.TEST.` did what a plain one does.
    SeaweedFS reads it path-style, AWS virtual-hosted: the proxy cannot know, so it forwards it
    untouched and fetches nothing; the client gets the store's own answer."""
    cid = uuid.uuid4().hex[:10]
    direct = world.direct["direct"].get(f"/pub/{cid}", headers={"host": host})
    answer = _through(world, "GET", host, f"/pub/{cid}")
    assert answer.status_code == direct.status_code and world.origin.requests_for(cid) == []
    assert "unsure-host" in world.proxies["direct"].log()


def test_a_delete_tombstones_the_key_the_store_deleted(world):
    """A user allowed only mine sends `DELETE /photos/k` with `Host: mine.s3.test`: the store
    deletes mine/photos/k; the tombstone is mine/photos/k, not photos/k."""
    cid = uuid.uuid4().hex[:10]
    world.admin.put_object(Bucket="mine", Key=f"photos/{cid}", Body=b"x")
    answer = _through(world, "DELETE", "mine.s3.test", f"/photos/{cid}", IDENTITIES["user"])
    assert answer.status_code == 204 and stored(world.admin, "mine", f"photos/{cid}") is None
    assert tombstoned(world.proxies["direct"].spool, {("mine", f"photos/{cid}"), ("photos", cid)}) == {("mine", f"photos/{cid}")}


def test_an_unknown_host_is_forwarded_untouched_logged_once_and_counted(world, tmp_path):
    proxy = world.proxies["direct"]
    for _ in range(3):
        cid = uuid.uuid4().hex[:10]
        assert _through(world, "GET", "lb.unknown.test", f"/pub/{cid}").status_code == 404
        assert world.origin.requests_for(cid) == []
    assert proxy.log().count("forwarded untouched (unknown-host): lb.unknown.test") == 1
    assert "--set backorigin_store_hosts=lb.unknown.test" in proxy.log()
    assert "backorigin_vhost_domains=unknown.test" in proxy.log()
    metrics = httpx.get(f"http://127.0.0.1:{proxy.options['backorigin_metrics_port']}/metrics").text
    counted = [line for line in metrics.splitlines() if line.startswith('backorigin_requests_set_aside_total{reason="unknown-host"}')]
    assert counted and float(counted[0].split()[-1]) >= 3
