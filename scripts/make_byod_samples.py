"""Build the small bring-your-own-data sample files under tests/data/ from ../shared/data (run once; committed).

- europarl_alpaca.jsonl: 240 Europarl EN->FR pairs as Alpaca instruction/input/output records
- europarl_chat.jsonl: 80 two-turn conversations (user EN, assistant FR, twice) in the ``messages`` format
- cola_train.csv / cola_dev.csv: 400 / 120 CoLA sentences with string labels (acceptable / unacceptable)
- europarl_docs/doc_NN.txt: 8 plain-text documents of 25 consecutive Europarl English lines each
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
OUT = ROOT / "tests" / "data"


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    base = SHARED / "europarl_en_fr" / "europarl-v7.fr-en.first3000"
    en = Path(f"{base}.en").read_text(encoding="utf-8").splitlines()
    fr = Path(f"{base}.fr").read_text(encoding="utf-8").splitlines()
    pairs = [(e.strip(), f.strip()) for e, f in zip(en, fr, strict=True) if e.strip() and f.strip() and len(e) < 160]
    with open(OUT / "europarl_alpaca.jsonl", "w", encoding="utf-8") as out:
        for e, f in pairs[:240]:
            out.write(json.dumps({"instruction": "Translate to French.", "input": e, "output": f},
                                 ensure_ascii=False) + "\n")
    chat = pairs[240:400]
    with open(OUT / "europarl_chat.jsonl", "w", encoding="utf-8") as out:
        for (e1, f1), (e2, f2) in zip(chat[0::2], chat[1::2], strict=True):
            messages = [{"role": "user", "content": f"French please: {e1}"}, {"role": "assistant", "content": f1},
                        {"role": "user", "content": f"And: {e2}"}, {"role": "assistant", "content": f2}]
            out.write(json.dumps({"messages": messages}, ensure_ascii=False) + "\n")
    names = {"1": "acceptable", "0": "unacceptable"}
    for split, n in (("train", 400), ("dev", 120)):
        rows = list(csv.reader(open(SHARED / "cola" / f"{split}.tsv", encoding="utf-8"), delimiter="\t",
                               quoting=csv.QUOTE_NONE))[:n]
        with open(OUT / f"cola_{split}.csv", "w", encoding="utf-8", newline="") as out:
            writer = csv.writer(out)
            writer.writerow(["sentence", "label"])
            writer.writerows([r[3], names[r[1]]] for r in rows)
    docs = OUT / "europarl_docs"
    docs.mkdir(exist_ok=True)
    lines = [e for e in en[1000:] if e.strip()]
    for i in range(8):
        (docs / f"doc_{i:02d}.txt").write_text("\n".join(lines[i * 25 : (i + 1) * 25]) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
