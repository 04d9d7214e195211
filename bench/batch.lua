-- POST /api/v1/alerts with arrays of BENCH_BATCH (1000) alerts, the same 80/20 mix of known
-- and fresh fingerprints as ingest.lua.
local common = dofile((os.getenv("BENCH_LUA_DIR") or "bench") .. "/wrkcommon.lua")
local path = os.getenv("BENCH_PATH") or "/api/v1/alerts"
local repeat_share = tonumber(os.getenv("BENCH_REPEAT") or "0.8")
local size = tonumber(os.getenv("BENCH_BATCH") or "1000")
local headers = common.headers("application/json")
local pool

function setup(thread) common.setup(thread) end

function init(args)
  common.seed(tid)
  pool = common.load_pool(os.getenv("BENCH_POOL_FILE"))
end

function request()
  local items = {}
  for i = 1, size do
    if #pool > 0 and math.random() < repeat_share then
      items[i] = pool[math.random(#pool)]
    else
      items[i] = common.fresh_alert(tid)
    end
  end
  return wrk.format("POST", path, headers, "[" .. table.concat(items, ",") .. "]")
end

done = common.done
