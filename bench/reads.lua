-- GET BENCH_READ_PATH (e.g. /api/v1/incidents?state=assessed&severity=high&limit=50) with a
-- reader key.
local common = dofile((os.getenv("BENCH_LUA_DIR") or "bench") .. "/wrkcommon.lua")
local path = os.getenv("BENCH_READ_PATH") or "/api/v1/incidents"
local headers = common.headers(nil)

function setup(thread) common.setup(thread) end

function request()
  return wrk.format("GET", path, headers)
end

done = common.done
