-- wrk script for the append workload: every wrk thread holds one keep-alive connection and
-- POSTs the same 1 KiB JSON message to its stream. Arguments (after `--`):
--   <path prefix> <"per-writer" | "shared"> <body file>
-- per-writer: thread i appends to "<prefix><i>"; shared: every thread appends to "<prefix>0".
-- done() prints one JSON line (prefixed "WRK_RESULT ") that run.py parses.

local counter = 0

function setup(thread)
  thread:set("writer", counter)
  counter = counter + 1
end

function init(args)
  local prefix, mode, body_file = args[1], args[2], args[3]
  local f = assert(io.open(body_file, "rb"))
  local body = f:read("*a")
  f:close()
  local index = (mode == "shared") and 0 or writer
  local path = prefix .. tostring(index)
  req = wrk.format("POST", path, { ["Content-Type"] = "application/json" }, body)
end

function request()
  return req
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'WRK_RESULT {"requests": %d, "duration_us": %d, "bytes": %d, ' ..
    '"errors": {"connect": %d, "read": %d, "write": %d, "status": %d, "timeout": %d}, ' ..
    '"latency_us": {"p50": %d, "p90": %d, "p99": %d, "max": %d, "mean": %.1f}}\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect, e.read, e.write, e.status, e.timeout,
    latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max, latency.mean))
end
