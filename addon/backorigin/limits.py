"""The sizes the proxy works with, each defined once.

A miss is answered *whole* (the whole body has arrived and been checked before the answer goes
out: its ETag is known, and a broken origin is a clean 424) or *streamed* (the answer goes out as
the body arrives). Whole answers: every HEAD, every body of unknown length, every miss the
response hook finds late, and an origin's transparent error answer; when the ETag is known before
the body (miss.answer.answers_whole), a body up to STREAM_FROM; otherwise a body up to
`backorigin_max_inline` and every request with an ETag condition. A fetch whose body is larger than that limit gets the copy
timeout instead of the total timeout, since its client is already being answered.
"""

from __future__ import annotations

KiB = 1024
MiB = 1024 * KiB

# backorigin_max_inline's default: the largest body answered whole (see above).
WHOLE_ANSWER_LIMIT = "64m"
# A miss whose ETag is known in advance streams from its first byte above this size; a body this
# small arrives in about the time the hop through the loopback miss server costs.
STREAM_FROM = 1 * MiB
# A miss this small (and answered whole) is answered from memory in the request hook, without the
# hop through the loopback miss server: the part size of the S3 transfer managers (s3transfer, the
# AWS CLI), so their ranged part GETs of larger objects fit too. Never more than the whole limit.
IN_HOOK_ANSWER_LIMIT = 8 * MiB
# The store's answer to the probe (the client's own GET or HEAD, sent before mitmproxy would) goes to
# the client from memory up to this size; a larger body is asked again by mitmproxy, which streams it
# (stream_large_bodies' default, so the proxy holds no more than mitmproxy would).
PROBE_ANSWER_LIMIT = 1 * MiB
# Write-backs of this size and more go up in parts of this size; the store's ETag depends on it.
PART_SIZE = 16 * MiB
# The most of a store's error answer that is read (to tell NoSuchKey from NoSuchBucket, say).
STORE_ERROR_BODY_LIMIT = 64 * KiB
# backorigin_max_object_size's default: a fetch whose body is larger ends (424, or a reset once answering).
MAX_OBJECT_SIZE = "50g"
# backorigin_spool_min_free's default: below it a miss is answered but not stored this time.
SPOOL_MIN_FREE = "1g"
# mitmproxy's stream_large_bodies, when the user has not set it: bodies above it pass through the
# proxy as they arrive (hits, PUTs, UploadPart) instead of being held whole in memory.
STREAM_LARGE_BODIES = "1m"
