"""Atomic checkpoint publishing, discovery and rotation on real directories."""

from pathlib import Path

from farlab.trainer import checkpoints


def _staged(root: Path, name: str) -> Path:
    staged = root / ".staging" / name
    staged.mkdir(parents=True)
    (staged / "model.safetensors").write_bytes(b"weights")
    return staged


def test_publish_marks_complete_and_latest_ignores_unmarked(tmp_path):
    checkpoints.publish(_staged(tmp_path, "checkpoint-2"), tmp_path / "checkpoint-2")
    checkpoints.publish(_staged(tmp_path, "checkpoint-10"), tmp_path / "checkpoint-10")
    # A checkpoint whose write was interrupted: no marker.
    (tmp_path / "checkpoint-12").mkdir()
    (tmp_path / "checkpoint-12" / "model.safetensors").write_bytes(b"partial")
    assert (tmp_path / "checkpoint-10" / checkpoints.COMPLETE_MARKER).is_file()
    assert checkpoints.latest_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-10"  # numeric, not lexical
    assert [p.name for p in checkpoints.complete_checkpoints(tmp_path)] == ["checkpoint-2", "checkpoint-10"]


def test_rotate_keeps_newest_complete_and_drops_partials(tmp_path):
    for step in (1, 2, 3):
        checkpoints.publish(_staged(tmp_path, f"checkpoint-{step}"), tmp_path / f"checkpoint-{step}")
    (tmp_path / "checkpoint-4").mkdir()  # partial
    checkpoints.rotate(tmp_path, keep=2)
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("checkpoint")) == [
        "checkpoint-2",
        "checkpoint-3",
    ]


def test_republishing_the_same_step_replaces_it(tmp_path):
    checkpoints.publish(_staged(tmp_path, "checkpoint-5"), tmp_path / "checkpoint-5")
    staged = _staged(tmp_path, "checkpoint-5")
    (staged / "model.safetensors").write_bytes(b"newer")
    checkpoints.publish(staged, tmp_path / "checkpoint-5")
    assert (tmp_path / "checkpoint-5" / "model.safetensors").read_bytes() == b"newer"
