-- POST /api/v1/alerts, one alert per request: BENCH_REPEAT (0.8) of the requests repeat a
-- fingerprint of the known pool (BENCH_POOL_FILE), the rest carry a fresh unique fingerprint
-- with a topic random among BENCH_TOPICS (5000).
local common = dofile((os.getenv("BENCH_LUA_DIR") or "bench") .. "/wrkcommon.lua")
local path = os.getenv("BENCH_PATH") or "/api/v1/alerts"
local repeat_share = tonumber(os.getenv("BENCH_REPEAT") or "0.8")
local headers = common.headers("application/json")
local pool

function setup(thread) common.setup(thread) end

function init(args)
  common.seed(tid)
  pool = common.load_pool(os.getenv("BENCH_POOL_FILE"))
end

function request()
  local body
  if #pool > 0 and math.random() < repeat_share then
    body = pool[math.random(#pool)]
  else
    body = common.fresh_alert(tid)
  end
  return wrk.format("POST", path, headers, body)
end

done = common.done
