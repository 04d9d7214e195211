"""Rebuild app/agencies/seed/agencies.json from ../shared/data/agencies/*.csv.

Usage: python scripts/build_seed.py [DATA_DIR]
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT.parent / "shared" / "data" / "agencies"


def main() -> None:
    records = []
    for name in ("central.csv", "provinces.csv"):
        with (DATA / name).open(encoding="utf-8") as fh:
            for row in csv.DictReader(fh):
                note = row.get("note") or None
                if row.get("merged_from"):
                    note = f"Formed on 2025-07-01 from: {row['merged_from']}"
                records.append(
                    {
                        "code": row["code"],
                        "name": row["name_vi"],
                        "name_en": row["name_en"] or None,
                        "kind": row["kind"],
                        "parent": None,
                        "note": note,
                        "spokesperson": None,
                    }
                )
    out = ROOT / "app" / "agencies" / "seed" / "agencies.json"
    out.write_text(json.dumps(records, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    print(f"wrote {len(records)} agencies to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
