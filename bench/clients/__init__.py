"""Which HTTP client for the store check and the origin fetch (issue 21, item 2):
`.venv/bin/python -m bench.clients` (not part of `make test` or `make bench`).

Side by side in one run, against one nginx on 127.0.0.1 (HTTP/1.1 keep-alive, and HTTPS with a
certificate from a CA made for the run), four clients used the way the addon would use them:

  (a) httpx.AsyncHTTPTransport, as s3/storeclient.py and miss/origin.py use it now;
  (b) httpcore.AsyncConnectionPool, used directly;
  (c) aiohttp.ClientSession (C parser and writer; auto_decompress=False, DummyCookieJar, a
      TCPConnector with keep-alive), when aiohttp is installed (`pip install aiohttp`);
  (d) `H11Pool` (h11pool.py): a pooled HTTP/1.1 client on asyncio streams and h11 (under 150 lines).

Workloads: a 1 KiB GET read whole (one at a time, and 8 at once), a 404 with a 300-byte XML body,
an 8 MiB GET streamed chunk by chunk, and the 1 KiB and 8 MiB GETs over HTTPS. Every figure is CPU
time of this process (time.process_time: robust to other load on the machine) per request (per MiB
for 8 MiB) and requests/s, the median of --reps repetitions, clients interleaved within each one.
Then a feature checklist, each item checked against loopback servers where it can be: what the
addon needs from its client. Prints Markdown (BENCHMARKS.md, "Which HTTP client").

The parts: `ask` (one request, and what a candidate offers), `libraries` (a-c), `h11pool` (d),
`measure` (the candidates, the floor, the workloads), `servers`, `checklist`, `run` (the command).
"""
