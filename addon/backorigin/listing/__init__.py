"""backorigin.listing: merged listing (opt-in): ListObjectsV2 and ListObjects through the proxy show the bucket's
objects and, merged in, the objects of every Mirror rule whose origin is an S3 bucket.

The merge is pure (`merge_page`, `merged_listing`): it reads two or more *sides*, each an
async iterator of entries in one key order (the store's listing; an origin bucket's listing,
its keys mapped to the bucket's), and produces one S3 page from them. Sides are read lazily,
a page at a time, so a page of 1000 entries never needs more than a page per side in memory,
whatever the size of the buckets.

- Keys are merged in the store's order and deduplicated; the store's entry wins.
- An origin's key is listed only when a GET of it would be mirrored from that origin: the
  rule's KeyPrefixEquals and KeySuffixEquals hold, no earlier rule claims the key, the key
  reaches the origin unchanged (no '//' collapsing, no '.'/'..' segment), and it is not
  hidden (a tombstone: deleted through the proxy).
- `prefix`, `delimiter` (CommonPrefixes rolled up over all sides, counted against max-keys
  as S3 counts them), `max-keys` (default and cap 1000), `start-after`, `encoding-type=url`
  and, for ListObjects v1, `marker`/NextMarker.
- The continuation token is ours (opaque to clients): the last key or common prefix returned,
  with the prefix and delimiter it belongs to; a later page resumes every side after it.
- The store still decides who may list: every page is answered only after the store let the
  client's own request through (`MergedListing.store_allows`); the proxy then lists the store
  with its own credentials (a client's signature covers its own query, which cannot change).

Rules that are merged: Mirror rules without key rewriting (ReplaceKeyWith and
EnableReplacePrefix unset) and without MirrorHost, whose MirrorURL is an S3 bucket, path
style: `http(s)://host:port/BUCKET/` or `.../BUCKET/SOME/PREFIX/` (then store key K is
origin key `SOME/PREFIX/` + K), signed with MirrorAuth or public. Other rules are simply not
merged. An origin that does not answer like an S3 bucket is left out (logged); one that fails
fails the listing (503), since a listing without it would not be the union.

Key order: S3 lists keys in UTF-8 binary order; SeaweedFS lists them folder by folder ('a/x'
before 'a-b'), which is binary order with '/' sorting first. The merge answers in the store's
order, which the proxy asks the store once with a probe (two empty objects listed, then deleted);
an origin's order is learned from its own pages, and until it is known to be the store's the
origin is read folder by folder in the store's order, right whatever its own turns out to be
(backorigin.listing.order says why and how). Never from a Server header, which fronts hide.

Limits: Owner is not listed (fetch-owner is accepted and ignored); only MirrorURL is listed,
never MirrorURLSlave; a rule's IncludeHeader conditions are evaluated against the listing
request's headers; every common prefix that only an origin lists costs one small listing under
it, to make sure a key there can be shown.
"""

