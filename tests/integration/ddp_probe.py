"""``torchrun ... tests/integration/ddp_probe.py <overrides>``: ``python -m farlab.train`` with each rank's run-dir
writes, evaluations and SFT-teacher builds recorded in ``$FARLAB_PROBE_DIR/rank<N>.jsonl`` (the real functions
still run: the probe wraps, it does not replace). ``FARLAB_PROBE_SIGNAL=<rank>:<step>`` sends a real SIGUSR1 to
that rank alone while that optimizer step runs, as a scheduler's signal reaching one task would."""

from __future__ import annotations

import functools
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any

from transformers import TrainerCallback

import farlab.run_record
import farlab.train
from farlab import distributed

PROBE = Path(os.environ["FARLAB_PROBE_DIR"])


def note(event: str, **info: Any) -> None:
    PROBE.mkdir(parents=True, exist_ok=True)
    with open(PROBE / f"rank{distributed.rank()}.jsonl", "a") as handle:
        handle.write(json.dumps({"event": event, **info}) + "\n")


def probed(owner: Any, name: str) -> None:
    original = getattr(owner, name)

    @functools.wraps(original)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        note(name)
        return original(*args, **kwargs)

    setattr(owner, name, wrapper)


for method in ("start", "finish", "write_metrics"):
    probed(farlab.run_record.RunRecord, method)
for function in ("evaluate_model", "export_student", "print_summary"):
    probed(farlab.train, function)


class SignalAt(TrainerCallback):
    def __init__(self, rank: int, step: int) -> None:
        self.rank, self.step = rank, step

    def on_step_begin(self, args, state, control, **kwargs):  # type: ignore[no-untyped-def]
        if distributed.rank() == self.rank and state.global_step + 1 == self.step:
            note("signal", step=self.step)
            os.kill(os.getpid(), signal.SIGUSR1)


if os.environ.get("FARLAB_PROBE_SIGNAL"):
    at_rank, at_step = (int(x) for x in os.environ["FARLAB_PROBE_SIGNAL"].split(":"))
    make_trainer = farlab.train.make_trainer

    def with_signal(*args: Any, **kwargs: Any) -> Any:
        trainer = make_trainer(*args, **kwargs)
        if kwargs.get("callbacks"):  # the run's trainer, not the SFT teacher's
            trainer.add_callback(SignalAt(at_rank, at_step))
        return trainer

    farlab.train.make_trainer = with_signal

if __name__ == "__main__":
    sys.argv = ["farlab.train", *sys.argv[1:]]
    farlab.train.main()
