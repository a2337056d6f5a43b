"""The SFT-teacher store: each SFT teacher is trained once per key and reused by every later run.

Key = (task config, teacher model, tokenizer, seed, teacher recipe). Concurrent jobs of a sweep that
need the same teacher build it once (:func:`farlab.atomic.build_once`): one trains, the others wait and reuse.
The ranks of one multi-process run train it together (:func:`farlab.distributed.build_once_together`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from farlab.distributed import build_once_together

log = logging.getLogger(__name__)
KEY_FILE = "store_key.json"


def store_key(material: dict[str, Any]) -> str:
    canonical = json.dumps(material, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


class TeacherStore:
    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root).expanduser()

    def entry_dir(self, name: str, material: dict[str, Any]) -> Path:
        slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name)
        return self.root / f"{slug}-{store_key(material)}"

    def get_or_train(
        self, name: str, material: dict[str, Any], train: Callable[[Path], None]
    ) -> tuple[Path, bool]:
        """The entry dir for ``material``, training it into a staging dir first if missing.

        Returns ``(path, reused)``.
        """
        entry = self.entry_dir(name, material)

        def build(staging: Path) -> None:
            log.info("training SFT teacher into the store: %s", entry)
            train(staging)
            (staging / KEY_FILE).write_text(json.dumps(material, indent=2, sort_keys=True, default=str))

        # Under torchrun every rank takes part in the (DDP) fine-tuning; rank 0 publishes the entry.
        reused = build_once_together(entry, build, "SFT teacher")
        if reused:
            log.info("reusing SFT teacher from the store: %s", entry)
        return entry, reused
