-- wrk script for the bench: prints one machine-readable line, and with BENCH_PATH_PREFIX
-- set, asks a new path for every request (prefix .. thread .. "-" .. counter), so that
-- each GET of a missing key is a fresh miss.
local prefix = os.getenv("BENCH_PATH_PREFIX")
local thread_count = 0

function setup(thread)
  thread_count = thread_count + 1
  thread:set("tid", thread_count)
end

if prefix ~= nil and prefix ~= "" then
  local n = 0
  request = function()
    n = n + 1
    return wrk.format("GET", prefix .. tid .. "-" .. n)
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH {"requests":%d,"duration_us":%d,"bytes":%d,"connect":%d,"read":%d,"write":%d,' ..
    '"status":%d,"timeout":%d,"p50":%d,"p90":%d,"p99":%d,"max":%d,"mean":%.1f}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write,
    e.status, e.timeout, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
