-- wrk script for benchmarks/embed_http.py: POST one real sentence per request to the URL's path.
--
--   wrk -t1 -cC -dDs --latency -s benchmarks/wrk_embed.lua http://host:port/embed -- BODIES_FILE
--
-- BODIES_FILE holds one complete JSON request body per line (rendered by the Python driver, so
-- no JSON escaping happens here). Requests are pre-formatted once in init() and cycled, so the
-- per-request cost in wrk is a table lookup: wrk shares the CPU with the server under test.
--
-- Why a response() callback: wrk's own summary counts only status >= 400 and would count a
-- 200 carrying garbage as a success. We count anything outside 2xx, and 2xx bodies that do not
-- look like a JSON array (TEI's `[[floats]]`, `/predict`'s `[{label, score}]`).
--
-- done() prints one line `WRK_JSON {...}` (latencies in microseconds) that the driver parses;
-- this is sturdier than parsing wrk's human-readable text.

local requests = {}
local n = 0
local i = 0
non2xx = 0
malformed = 0

local threads = {}

function setup(thread)
   table.insert(threads, thread)
end

function init(args)
   local path = args[1]
   if path == nil then
      error("usage: wrk ... -s wrk_embed.lua URL -- BODIES_FILE")
   end
   local f = assert(io.open(path, "r"))
   -- wrk's -H headers (an Authorization: Bearer key, say) plus the JSON content type.
   local headers = { ["Content-Type"] = "application/json" }
   for name, value in pairs(wrk.headers) do
      headers[name] = value
   end
   for line in f:lines() do
      if #line > 0 then
         n = n + 1
         requests[n] = wrk.format("POST", nil, headers, line)
      end
   end
   f:close()
   if n == 0 then
      error("no request bodies in " .. path)
   end
end

function request()
   i = i % n + 1
   return requests[i]
end

function response(status, headers, body)
   if status < 200 or status >= 300 then
      non2xx = non2xx + 1
   elseif body == nil or body:sub(1, 1) ~= "[" then
      malformed = malformed + 1
   end
end

function done(summary, latency, requests_)
   local bad, bad_body = 0, 0
   for _, thread in ipairs(threads) do
      bad = bad + (thread:get("non2xx") or 0)
      bad_body = bad_body + (thread:get("malformed") or 0)
   end
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"duration_us":%d,"requests":%d,"bytes":%d,' ..
      '"errors":{"connect":%d,"read":%d,"write":%d,"status":%d,"timeout":%d},' ..
      '"non2xx":%d,"malformed":%d,' ..
      '"latency_us":{"min":%d,"mean":%.1f,"stdev":%.1f,"max":%d,' ..
      '"p50":%d,"p90":%d,"p99":%d,"p999":%d}}\n',
      summary.duration, summary.requests, summary.bytes,
      e.connect, e.read, e.write, e.status, e.timeout,
      bad, bad_body,
      latency.min, latency.mean, latency.stdev, latency.max,
      latency:percentile(50), latency:percentile(90), latency:percentile(99),
      latency:percentile(99.9)))
end
