"""The SFT-teacher store: each SFT teacher is trained once per key and reused by every later run.

Key = (task config, teacher model, tokenizer, seed, teacher recipe). Concurrent jobs of a sweep that
need the same teacher serialise on an ``fcntl`` lock: one trains, the others wait and then reuse.
The kernel drops an ``fcntl`` lock when its holder dies, so a crashed trainer never leaves a lock
that others wait on forever; its half-written staging dir is simply discarded.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from farlab.trainer.checkpoints import COMPLETE_MARKER, publish

log = logging.getLogger(__name__)
KEY_FILE = "store_key.json"


def store_key(material: dict[str, Any]) -> str:
    canonical = json.dumps(material, sort_keys=True, default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:16]


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


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
        with file_lock(entry.with_suffix(".lock")):
            if (entry / COMPLETE_MARKER).is_file():
                log.info("reusing SFT teacher from the store: %s", entry)
                return entry, True
            # Holding the lock, any staging dir of this entry is a dead trainer's leftover.
            for leftover in entry.parent.glob(f".{entry.name}.staging-*"):
                shutil.rmtree(leftover, ignore_errors=True)
            staging = entry.parent / f".{entry.name}.staging-{os.getpid()}"
            staging.mkdir(parents=True)
            log.info("training SFT teacher into the store: %s", entry)
            train(staging)
            (staging / KEY_FILE).write_text(json.dumps(material, indent=2, sort_keys=True, default=str))
            publish(staging, entry)
            return entry, False
