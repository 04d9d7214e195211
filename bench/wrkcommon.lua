-- Shared by the wrk scripts in bench/: thread ids, the known-fingerprint pool, fresh alerts,
-- and a done() that prints one machine-readable line (BENCHJSON {...}) for bench/run.py.
local M = {}

local counter = 0
function M.setup(thread)
  counter = counter + 1
  thread:set("tid", counter)
end

function M.seed(tid)
  math.randomseed(1000003 * (tid or 1) + tonumber(os.getenv("BENCH_SEED") or "7"))
end

function M.headers(content_type)
  local h = { ["Authorization"] = "Bearer " .. (os.getenv("BENCH_KEY") or "") }
  if content_type then h["Content-Type"] = content_type end
  return h
end

-- One alert JSON per line, written by bench/alerts.py (bodies of the fixed pool).
function M.load_pool(path)
  local pool = {}
  if not path then return pool end
  local fh = assert(io.open(path, "r"))
  for line in fh:lines() do
    if #line > 0 then pool[#pool + 1] = line end
  end
  fh:close()
  return pool
end

local subjects = {
  "giá xăng dầu", "bảo hiểm xã hội", "học phí đại học", "dịch sốt xuất huyết",
  "lũ lụt miền Trung", "thuế thu nhập cá nhân", "tiền lương cơ sở", "sáp nhập tỉnh",
  "vắc xin sởi", "giá điện", "cao tốc Bắc - Nam", "an toàn thực phẩm", "đất đai",
  "thi tốt nghiệp THPT", "căn cước công dân", "giá vàng", "ngân hàng", "sạt lở đất",
}
local categories = { "fake_news", "negative_sentiment", "policy_misunderstanding", "crisis", "other" }
local prefixes = {
  fake_news = "Tin giả về", negative_sentiment = "Bình luận tiêu cực về",
  policy_misunderstanding = "Hiểu sai chính sách", crisis = "Khủng hoảng truyền thông về",
  other = "Thông tin cần theo dõi về",
}
local severities = { "info", "warning", "warning", "medium", "high", "high", "major", "critical" }
local platforms = { "facebook", "tiktok", "youtube", "zalo", "baomoi", "x" }
local agencies = { "MOH", "MOF", "MOIT", "MOET", "MOHA", "MPS", "MIC", "SBV", "P-HANOI", "P-HCMC" }

local topics = tonumber(os.getenv("BENCH_TOPICS") or "5000")
local nonce = os.getenv("BENCH_NONCE") or tostring(os.time())
local fresh_n = 0

-- A new alert: unique fingerprint, topic random among `topics` (same shape as alerts.py).
function M.fresh_alert(tid)
  fresh_n = fresh_n + 1
  local topic = math.random(0, topics - 1)
  local category = categories[math.random(#categories)]
  local subject = subjects[(topic % #subjects) + 1]
  local platform = platforms[math.random(#platforms)]
  return string.format(
    '{"source":"social-listening","title":"%s %s (t%04d)","description":"Bài đăng trên %s về %s được chia sẻ nhiều lần.",'
    .. '"fingerprint":"fp-%s-%d-%d","severity":"%s","category":"%s",'
    .. '"labels":{"topic":"t%04d","platform":"%s","agency":"%s"},'
    .. '"url":"https://%s.example.vn/p/%d","observed_at":"2026-11-26T10:18:20+07:00",'
    .. '"metrics":{"shares":%d.0}}',
    prefixes[category], subject, topic, platform, subject,
    nonce, tid or 0, fresh_n, severities[math.random(#severities)], category,
    topic, platform, agencies[(topic % #agencies) + 1],
    platform, math.random(1, 999999999), math.random(10, 50000))
end

function M.done(summary, latency, requests)
  local e = summary.errors
  local fields = {
    string.format('"requests":%.0f', summary.requests),
    string.format('"duration_us":%.0f', summary.duration),
    string.format('"bytes":%.0f', summary.bytes),
    string.format('"connect":%.0f', e.connect), string.format('"read":%.0f', e.read),
    string.format('"write":%.0f', e.write), string.format('"status":%.0f', e.status),
    string.format('"timeout":%.0f', e.timeout),
    string.format('"mean_us":%.1f', latency.mean), string.format('"max_us":%.0f', latency.max),
  }
  for _, p in ipairs({ 50, 75, 90, 95, 99, 99.9 }) do
    local name = (p == 99.9) and "p99.9" or ("p" .. p)
    fields[#fields + 1] = string.format('"%s_us":%.0f', name, latency:percentile(p))
  end
  io.write("BENCHJSON {" .. table.concat(fields, ",") .. "}\n")
end

return M
