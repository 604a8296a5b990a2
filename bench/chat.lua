-- wrk script: non-streaming OpenAI chat completion POST.
-- Environment: BENCH_KEY (bearer token), BENCH_BODY_FILE (JSON body; default: built in).
-- done() prints one JSON line prefixed with "BENCHJSON " that bench/run.py parses.
local key = os.getenv("BENCH_KEY") or "sk-bench-direct"
local body = '{"model":"gpt-4o-mini","max_tokens":64,"messages":[{"role":"user","content":"Say hello in a few words. [[tokens:16]]"}]}'
local path = os.getenv("BENCH_BODY_FILE")
if path and path ~= "" then
  local f = io.open(path, "rb")
  if f then body = f:read("*a"); f:close() end
end

wrk.method = "POST"
wrk.path = "/v1/chat/completions"
wrk.body = body
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer " .. key

done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCHJSON {"requests":%d,"duration_us":%d,"bytes":%d,"err_connect":%d,"err_read":%d,"err_write":%d,' ..
    '"err_status":%d,"err_timeout":%d,"lat_mean_us":%.1f,"lat_max_us":%d,"p50_us":%d,"p90_us":%d,"p99_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status, e.timeout,
    latency.mean, latency.max, latency:percentile(50), latency:percentile(90), latency:percentile(99)))
end
