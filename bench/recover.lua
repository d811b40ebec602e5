-- wrk script for the passgate benchmark: POST recoverPasscode with the operator's bearer token.
-- BENCH_TOKEN: the bearer token (sent to every path; the direct and nginx paths ignore it).
-- BENCH_DELAY_MS: if > 0, each connection pauses ~that long (uniform 0.5x..1.5x) between its
-- requests, which turns wrk's closed loop into an approximately fixed offered rate
-- (connections * 1000 / (delay + service time) requests/s). wrk has no rate option and wrk2 is
-- not packaged in Debian, so this is how the "latency at half of peak" run is paced.
-- done() prints one machine-readable "BENCH ..." line that bench/run.sh parses.

-- BENCH_TOKENS_FILE: if set, a file of distinct tokens (one per line); each request carries the
-- next one (threads take disjoint slices), so every signature check is a cold one.

wrk.method = "POST"
wrk.headers["Authorization"] = "Bearer " .. (os.getenv("BENCH_TOKEN") or "")
wrk.headers["Content-Length"] = "0"

local threads = 0
function setup(thread)
  thread:set("id", threads)
  threads = threads + 1
end

local tokens, next_token = nil, 1
function init(args)
  local file = os.getenv("BENCH_TOKENS_FILE")
  if file == nil or file == "" then
    return
  end
  local all = {}
  for line in io.lines(file) do
    all[#all + 1] = line
  end
  -- This thread's slice: thread i of n takes every n-th token starting at i + 1.
  local n = tonumber(os.getenv("BENCH_THREADS") or "1") or 1
  tokens = {}
  for i = (id or 0) + 1, #all, n do
    tokens[#tokens + 1] = all[i]
  end
end

function request()
  if tokens == nil then
    return wrk.format()
  end
  local t = tokens[next_token]
  next_token = next_token % #tokens + 1
  return wrk.format(nil, nil, { ["Authorization"] = "Bearer " .. t, ["Content-Length"] = "0" })
end

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
