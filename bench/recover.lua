-- wrk script for the passgate benchmark: POST recoverPasscode with the operator's bearer token.
-- BENCH_TOKEN: the bearer token (sent to every path; the direct and nginx paths ignore it).
-- BENCH_DELAY_MS: if > 0, each connection pauses ~that long (uniform 0.5x..1.5x) between its
-- requests, which turns wrk's closed loop into an approximately fixed offered rate
-- (connections * 1000 / (delay + service time) requests/s). wrk has no rate option and wrk2 is
-- not packaged in Debian, so this is how the "latency at half of peak" run is paced.
-- done() prints one machine-readable "BENCH ..." line that bench/run.sh parses.

wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_TOKEN") or "")
wrk.headers["Content-Length"] = "0"

local delay_ms = tonumber(os.getenv("BENCH_DELAY_MS") or "0") or 0

if delay_ms > 0 then
  function delay()
    return math.random(math.floor(delay_ms / 2), math.floor(delay_ms * 3 / 2))
  end
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    "BENCH requests=%d duration_us=%d connect=%d read=%d write=%d status=%d timeout=%d " ..
    "p50_us=%d p99_us=%d p999_us=%d mean_us=%.1f max_us=%d\n",
    summary.requests, summary.duration, e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(99), latency:percentile(99.9),
    latency.mean, latency.max))
end
