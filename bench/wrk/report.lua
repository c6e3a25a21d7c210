-- wrk script of make bench: plain GETs of the URL, or (argument: a file with
-- one path per line) those paths round-robin, e.g. download links. There is
-- no response(): wrk then keeps neither headers nor bodies, which matters for
-- 10 MB downloads. done() prints one JSON line (prefix BENCH_JSON) for
-- bench/load.py.
local paths, pos = {}, 0

function init(args)
  if args[1] then
    for line in io.lines(args[1]) do
      table.insert(paths, wrk.format("GET", line))
    end
  end
end

function request()
  if #paths == 0 then
    return wrk.request()
  end
  pos = pos % #paths + 1
  return paths[pos]
end

function done(summary, latency, requests)
  local e = summary.errors
  io.write(string.format(
    'BENCH_JSON {"requests":%d,"duration_us":%d,"bytes":%d,"errors_connect":%d,"errors_read":%d,' ..
    '"errors_write":%d,"errors_status":%d,"errors_timeout":%d,"p50_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, summary.bytes, e.connect, e.read, e.write, e.status,
    e.timeout, latency:percentile(50), latency:percentile(99), latency.max))
end
