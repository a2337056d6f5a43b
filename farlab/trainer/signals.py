"""Graceful stop on SIGUSR1/SIGUSR2: finish the optimizer step, checkpoint, record "preempted", requeue.

Clusters warn a job before its time limit (``sbatch --signal=USR1@120``), ``scancel --signal=USR1|USR2`` asks a
job to yield, and submitit preempts with USR2. Inside the training loop a signal can land in the middle of a
backward pass or a checkpoint write, so there the handler only sets a flag; :class:`GracefulStop` turns the flag
into "save now and stop" at the next optimizer-step boundary, where the Trainer's atomic checkpoint captures a
consistent state (weights, extras, optimizer, scheduler, RNG, data position, callback state). Outside the loop
(loading models, SFT-teacher training, pre/post evaluation) there is nothing new to save, and these stages can take
longer than the grace period, so the handler raises :class:`Preempted` at once, like Ctrl-C raises
KeyboardInterrupt; every file farlab writes there is written atomically, so unwinding leaves nothing torn.

After the run's bookkeeping (status ``preempted``), :func:`requeue_or_exit` hands over to whoever can restart the
job in the same run dir:

* under submitit (Hydra's ``submitit_slurm``/``submitit_local`` launchers): submitit's own preemption handler,
  which re-pickles the launcher's checkpointable callable, requeues (``scontrol requeue`` / local restart),
  counts timeouts against ``max_num_timeout`` and exits;
* in a plain SLURM job (your own sbatch script): ``scontrol requeue <job>``; SLURM reruns the batch script, so
  give it a fixed ``hydra.run.dir`` (e.g. ``outputs/$SLURM_JOB_ID``: the id survives a requeue);
* elsewhere: exit with :data:`PREEMPTED_EXIT_CODE`; re-running the command with ``hydra.run.dir=<the run dir>``
  resumes from the newest complete checkpoint.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from transformers import TrainerCallback, TrainerControl, TrainerState, TrainingArguments

from farlab import distributed

log = logging.getLogger(__name__)

STOP_SIGNALS: tuple[signal.Signals, ...] = (signal.SIGUSR1, signal.SIGUSR2)
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): "temporary failure, try again later"

SignalFn = Callable[[int, types.FrameType | None], Any]
Handler = SignalFn | int | None


class Preempted(BaseException):
    """The run stopped on a signal; it is resumable, not failed.

    A BaseException, like KeyboardInterrupt: raised asynchronously outside the training loop, it must not be
    swallowed by library code's ``except Exception``.

    step: the global step training stopped after (its checkpoint is ``checkpoint``); None when the signal
    arrived outside the training loop. resubmit: submitit's preemption handler when the run is a submitit job
    (see :func:`requeue_or_exit`).
    """

    def __init__(
        self, signum: int, step: int | None, checkpoint: Path | None, resubmit: SignalFn | None = None
    ) -> None:
        self.signum, self.step, self.checkpoint, self.resubmit = signum, step, checkpoint, resubmit
        name = signal.Signals(signum).name
        if step is None:
            msg = f"stopped by {name} outside the training loop (nothing new to save)"
        else:
            msg = f"stopped by {name} after step {step} ({checkpoint.name if checkpoint else 'no checkpoint'} saved)"
        super().__init__(msg)


class GracefulStop(TrainerCallback):
    """Signal flag + Trainer callback: on the first stop signal, save at the next step end and stop."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self.stopped_at: int | None = None  # global step at which training was stopped
        self.resubmit: SignalFn | None = None  # submitit's handler, found when ours are installed
        self.in_training = False  # between on_train_begin and on_train_end
        self.holding = False  # see hold()
        self._raised = False
        self._previous: dict[int, Handler] = {}

    @property
    def requested(self) -> bool:
        return self.signum is not None

    def _handle(self, signum: int, frame: types.FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum
        if not self.in_training and not self.holding and not self._raised:
            self._raised = True
            raise Preempted(signum, None, None, self.resubmit)

    @contextmanager
    def hold(self) -> Iterator[None]:
        """Only note signals in this block (the run's final bookkeeping: a finished run is not preempted)."""
        self.holding = True
        try:
            yield
        finally:
            self.holding = False

    @contextmanager
    def installed(self) -> Iterator[GracefulStop]:
        """Install the handlers for the block, restoring the previous ones (e.g. submitit's) afterwards."""
        if threading.current_thread() is not threading.main_thread():
            log.warning("not in the main thread: SIGUSR1/SIGUSR2 will not stop training gracefully")
            yield self
            return
        self.resubmit = submitit_handler()
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        try:
            yield self
        finally:
            for sig, previous in self._previous.items():
                signal.signal(sig, signal.SIG_DFL if previous is None else previous)
            self._previous.clear()

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        self.in_training = True
        return control

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        self.in_training = False
        return control

    def on_step_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> TrainerControl:
        if self.stopped_at is None:
            # Across processes a signal may reach some ranks only, or at different steps: all ranks agree on
            # "any rank saw one" here, at the same step boundary, so they save one checkpoint and stop together.
            agreed = distributed.agreed_max(self.signum or 0)
            if agreed and self.signum is None:
                self.signum = agreed
        if self.signum is not None and self.stopped_at is None:
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True
            log.warning(
                "%s received: saving a checkpoint at step %d/%d and stopping",
                signal.Signals(self.signum).name,
                state.global_step,
                state.max_steps,
            )
        return control


# ---- requeue -------------------------------------------------------------------------------------


def submitit_handler() -> SignalFn | None:
    """submitit's installed preemption handler when this process is a submitit job, else None."""
    if not os.environ.get("SUBMITIT_EXECUTOR"):
        return None
    try:
        from submitit.core.job_environment import JobEnvironment, SignalHandler
    except ImportError:
        return None
    handler = signal.getsignal(JobEnvironment._usr_sig())
    return handler if isinstance(getattr(handler, "__self__", None), SignalHandler) else None  # type: ignore[return-value]


def slurm_job_id() -> str | None:
    """The id ``scontrol`` knows this job by (``<array job>_<task>`` for array tasks)."""
    env = os.environ
    if env.get("SLURM_ARRAY_JOB_ID") and env.get("SLURM_ARRAY_TASK_ID"):
        return f"{env['SLURM_ARRAY_JOB_ID']}_{env['SLURM_ARRAY_TASK_ID']}"
    return env.get("SLURM_JOB_ID")


def requeue_or_exit(err: Preempted) -> NoReturn:
    """Hand a preempted run to the scheduler (see the module docstring); never returns."""
    for sig in STOP_SIGNALS:  # a repeated signal (scancel retries) must not start a second requeue
        signal.signal(sig, signal.SIG_IGN)
    if err.resubmit is not None:
        log.warning("preempted (%s): requeueing through submitit", err)
        _flush_logs()
        err.resubmit(err.signum, None)  # checkpoints the launcher callable, requeues, sys.exit()s
        sys.exit(PREEMPTED_EXIT_CODE)  # not reached with submitit 1.5 (its handler always exits or raises)
    job = slurm_job_id()
    if job is not None and not distributed.is_main():
        log.warning("preempted (%s): rank %d exits; rank 0 requeues the job", err, distributed.rank())
        job = None
    elif job is not None:
        # Log before the call: once SLURM accepts the requeue it terminates this job step, often before
        # `scontrol` has even returned, so a line written afterwards may never reach output.log.
        log.warning("preempted (%s): requeueing SLURM job %s; it resumes in the same run dir", err, job)
        _flush_logs()
        # The checkpoint and run record are already on disk; SLURM's SIGTERM for the requeue would only cut
        # the few lines left short, so let this process finish them and exit on its own (as submitit does).
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        res = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True, timeout=60, check=False)
        if res.returncode != 0:
            log.error("preempted (%s): `scontrol requeue %s` failed: %s", err, job, res.stderr.strip())
    else:
        log.warning(
            "preempted (%s): exiting with code %d; re-run the same command with hydra.run.dir=<this run dir> to resume",
            err,
            PREEMPTED_EXIT_CODE,
        )
    _flush_logs()
    sys.exit(PREEMPTED_EXIT_CODE)


def _flush_logs() -> None:
    for handler in logging.getLogger().handlers:
        handler.flush()
