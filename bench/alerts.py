"""Generic alert bodies for the ingest benchmarks (the Lua scripts build fresh ones the same way).

The pool of "known" fingerprints is written to a JSON-lines file that bench/ingest.lua and
bench/batch.lua read, and registered with the server before the measured run, so the 80 %
repeats really are repeats of fingerprints attached to open incidents.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

TOPICS = 5000
POOL = 2000

SUBJECTS = [
    "giá xăng dầu", "bảo hiểm xã hội", "học phí đại học", "dịch sốt xuất huyết",
    "lũ lụt miền Trung", "thuế thu nhập cá nhân", "tiền lương cơ sở", "sáp nhập tỉnh",
    "vắc xin sởi", "giá điện", "cao tốc Bắc - Nam", "an toàn thực phẩm", "đất đai",
    "thi tốt nghiệp THPT", "căn cước công dân", "giá vàng", "ngân hàng", "sạt lở đất",
]
PREFIXES = {
    "fake_news": "Tin giả về",
    "negative_sentiment": "Bình luận tiêu cực về",
    "policy_misunderstanding": "Hiểu sai chính sách",
    "crisis": "Khủng hoảng truyền thông về",
    "other": "Thông tin cần theo dõi về",
}
SEVERITY_WORDS = ["info", "warning", "warning", "medium", "high", "high", "major", "critical"]
PLATFORMS = ["facebook", "tiktok", "youtube", "zalo", "baomoi", "x"]
AGENCIES = ["MOH", "MOF", "MOIT", "MOET", "MOHA", "MPS", "MIC", "SBV", "P-HANOI", "P-HCMC"]


def topic_label(index: int) -> str:
    return f"t{index:04d}"


def make_alert(fingerprint: str, topic: int, rng: random.Random) -> dict[str, Any]:
    category = rng.choice(list(PREFIXES))
    subject = SUBJECTS[topic % len(SUBJECTS)]
    platform = rng.choice(PLATFORMS)
    return {
        "source": "social-listening",
        "title": f"{PREFIXES[category]} {subject} ({topic_label(topic)})",
        "description": f"Bài đăng trên {platform} về {subject} được chia sẻ nhiều lần.",
        "fingerprint": fingerprint,
        "severity": rng.choice(SEVERITY_WORDS),
        "category": category,
        "labels": {"topic": topic_label(topic), "platform": platform,
                   "agency": AGENCIES[topic % len(AGENCIES)]},
        "url": f"https://{platform}.example.vn/p/{rng.randrange(10**9)}",
        "observed_at": "2026-11-26T10:18:20+07:00",
        "metrics": {"shares": float(rng.randrange(10, 50000))},
    }


def pool_alerts(size: int = POOL, topics: int = TOPICS, seed: int = 42) -> list[dict[str, Any]]:
    """The fixed pool: fingerprint i always carries the same body and topic."""
    rng = random.Random(seed)
    return [make_alert(f"fp-pool-{i:05d}", rng.randrange(topics), rng) for i in range(size)]


def write_pool(path: Path, alerts: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as fh:
        for alert in alerts:
            fh.write(json.dumps(alert, ensure_ascii=False, separators=(",", ":")) + "\n")
    return path
