-- wrk script: durable first hops, each a new Africa's Talking session for one of the 100,000 phones
-- `kichhoat bench run --phones 100000 --prefill 32 ...` gave a stored conversation (+84930000000 to
-- +84930099999, the bench's numbering). Usage (BENCHMARKS.md, "wrk"):
--   wrk -t1 -c32 -d15s --latency -s bench/wrk-first-hop.lua http://127.0.0.1:18181
local n = 0
local tid = 0

setup = function(thread)
  thread:set("tid", tid)
  tid = tid + 1
end

init = function(args)
  math.randomseed(os.time() + tid)
end

request = function()
  n = n + 1
  local phone = string.format("%%2B8493%07d", math.random(0, 99999))
  local body = "sessionId=w" .. tid .. "-" .. n .. "-" .. math.random(1, 1e9)
    .. "&serviceCode=%2A384%23&phoneNumber=" .. phone .. "&networkCode=45201&text="
  return wrk.format("POST", "/ussd/africastalking",
    { ["Content-Type"] = "application/x-www-form-urlencoded" }, body)
end
