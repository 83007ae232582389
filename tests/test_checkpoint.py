"""Specification of `secateurs.checkpoint`: exact round trips, atomic writes, safe loads."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from secateurs.checkpoint import load_checkpoint, save_checkpoint
from secateurs.errors import CheckpointError
from secateurs.masks import MaskSet


def _assert_identical(got: object, want: object) -> None:
    """Same nested structure and types; tensors equal bit for bit (NaN payloads included)."""
    assert type(got) is type(want)
    if isinstance(want, Tensor):
        assert isinstance(got, Tensor)
        assert (got.dtype, got.shape, got.device) == (want.dtype, want.shape, torch.device("cpu"))
        assert torch.equal(
            got.contiguous().view(-1).view(torch.uint8), want.contiguous().view(-1).view(torch.uint8)
        )
    elif isinstance(want, dict):
        assert isinstance(got, dict)
        assert list(got) == list(want)
        for key in want:
            _assert_identical(got[key], want[key])
    elif isinstance(want, list | tuple):
        assert isinstance(got, list | tuple)
        assert len(got) == len(want)
        for g, w in zip(got, want, strict=True):
            _assert_identical(g, w)
    else:
        assert got == want


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))


def _sgd_step(model: nn.Module, opt: torch.optim.Optimizer) -> None:
    x = torch.arange(20.0).reshape(5, 4) / 10
    opt.zero_grad()
    nn.functional.cross_entropy(model(x), torch.tensor([0, 1, 1, 0, 1])).backward()
    opt.step()


# -- round trip -------------------------------------------------------------------------------


def test_round_trip_is_exact_for_nested_plain_data(tmp_path: Path) -> None:
    gen = torch.Generator().manual_seed(1)
    payload: dict[str, Any] = {
        "tensors": {
            "f32": torch.randn(3, 4, generator=gen),
            "nan": torch.tensor([float("nan"), -0.0, float("inf")]),
            "f64": torch.randn(2, generator=gen, dtype=torch.float64),
            "f16": torch.randn(5, generator=gen).half(),
            "bf16": torch.randn(5, generator=gen).bfloat16(),
            "i64": torch.arange(7),
            "scalar": torch.tensor(3),
            "strided": torch.arange(12.0).reshape(3, 4).t(),
        },
        "list": [1, 2.5, "three", None, True, [False, {"deep": torch.ones(2, dtype=torch.bool)}]],
        "tuple": (1, "a"),
        "meta": {"epoch": 3, "lr": 0.1, "recipe": "imp", "done": False, "note": None, 7: "int key"},
    }
    path = tmp_path / "ck.pt"
    save_checkpoint(path, payload)
    _assert_identical(load_checkpoint(path), payload)


def test_round_trip_restores_model_and_sgd_momentum_exactly(tmp_path: Path) -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    _sgd_step(model, opt)
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"model": model.state_dict(), "optimizer": opt.state_dict()})

    payload = load_checkpoint(path)
    _assert_identical(payload["optimizer"], opt.state_dict())
    restored = _model()
    restored.load_state_dict(payload["model"])
    restored_opt = torch.optim.SGD(restored.parameters(), lr=0.5)
    restored_opt.load_state_dict(payload["optimizer"])

    _sgd_step(model, opt)  # the next step uses the momentum buffers: identical only if restored exactly
    _sgd_step(restored, restored_opt)
    _assert_identical(restored.state_dict(), model.state_dict())


def test_round_trip_of_bool_masks(tmp_path: Path) -> None:
    model = _model()
    masks = MaskSet({"0.weight": torch.rand(3, 4) > 0.5, "3.weight": torch.tensor([[True, False, True]] * 2)})
    save_checkpoint(tmp_path / "ck.pt", {"masks": masks.state_dict()})
    loaded = MaskSet.from_state_dict(load_checkpoint(tmp_path / "ck.pt")["masks"], model)
    assert loaded.equal(masks)
    assert all(mask.dtype == torch.bool for mask in loaded.values())


def test_save_creates_parent_directories_and_replaces_old_content(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "ck.pt"
    save_checkpoint(path, {"step": 1})
    save_checkpoint(str(path), {"step": 2})
    assert load_checkpoint(str(path)) == {"step": 2}
    assert sorted(p.name for p in path.parent.iterdir()) == ["ck.pt"]


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX permission bits")
def test_new_file_permissions_follow_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        save_checkpoint(tmp_path / "ck.pt", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "ck.pt").stat().st_mode & 0o777 == 0o640


# -- atomicity --------------------------------------------------------------------------------


def _half_write_then(exc: BaseException) -> Callable[..., None]:
    """A torch.save stand-in that writes part of a file, then fails."""

    def fake_save(obj: object, handle: Any, *args: object, **kwargs: object) -> None:
        handle.write(b"PK\x03\x04 half a zip file")
        raise exc

    return fake_save


@pytest.mark.parametrize(
    ("target", "exc", "expected"),
    [
        ("save", OSError(28, "No space left on device"), CheckpointError),
        ("save", KeyboardInterrupt(), KeyboardInterrupt),
        ("replace", OSError(13, "Permission denied"), CheckpointError),
    ],
)
def test_failed_write_leaves_previous_file_intact_and_no_temp_files(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    target: str,
    exc: BaseException,
    expected: type[BaseException],
) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(100.0)}})
    before = path.read_bytes()
    if target == "save":
        monkeypatch.setattr(torch, "save", _half_write_then(exc))
    else:

        def fake_replace(*_: object) -> None:
            raise exc

        monkeypatch.setattr(os, "replace", fake_replace)
    with pytest.raises(expected):
        save_checkpoint(path, {"model": {"w": torch.zeros(100)}})
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["ck.pt"]
    _assert_identical(load_checkpoint(path), {"model": {"w": torch.arange(100.0)}})


def test_failed_first_write_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch, "save", _half_write_then(OSError(28, "No space left on device")))
    with pytest.raises(CheckpointError, match=r"could not write the checkpoint.*No space left"):
        save_checkpoint(tmp_path / "ck.pt", {"x": 1})
    assert list(tmp_path.iterdir()) == []


# -- refusing bad payloads at save time --------------------------------------------------------


class _Custom:
    pass


@pytest.mark.parametrize(
    ("payload", "where", "kind"),
    [
        ({"meta": {"acc": np.float64(0.5)}}, r"payload\['meta'\]\['acc'\]", "numpy.float64"),
        ({"items": [1, _Custom()]}, r"payload\['items'\]\[1\]", "_Custom"),
        ({"s": {1, 2}}, r"payload\['s'\]", "builtins.set"),
        ({"k": {(1, 2): 3}}, r"payload\['k'\] \(a key\)", "builtins.tuple"),
    ],
)
def test_save_refuses_what_a_safe_load_would_refuse(
    tmp_path: Path, payload: dict[str, Any], where: str, kind: str
) -> None:
    with pytest.raises(CheckpointError, match=f"{where}: a .*{kind} cannot be stored"):
        save_checkpoint(tmp_path / "ck.pt", payload)
    assert list(tmp_path.iterdir()) == []


def test_save_refuses_a_non_dict_payload(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="payload must be a dict, got list"):
        save_checkpoint(tmp_path / "ck.pt", [1, 2])  # type: ignore[arg-type]


# -- refusing bad files at load time -----------------------------------------------------------


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.pt"
    with pytest.raises(
        CheckpointError, match=rf"{re.escape(str(path))}: no checkpoint file exists here.*Fix: check the path"
    ):
        load_checkpoint(path)


def test_directory_instead_of_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="is a directory"):
        load_checkpoint(tmp_path)


@pytest.mark.parametrize("keep", [0.0, 0.1, 0.5, 0.9])
def test_truncated_file(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(1000.0)}})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(
        CheckpointError,
        match=rf"{re.escape(str(path))}: the file is not a readable checkpoint.*Fix: delete it",
    ):
        load_checkpoint(path)


def test_random_bytes(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    path.write_bytes(np.random.default_rng(0).bytes(4096))
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        load_checkpoint(path)


@pytest.mark.parametrize("obj", [torch.ones(3), {"model": {"w": torch.ones(3)}}, [1, 2]])
def test_plain_torch_file_is_not_ours(tmp_path: Path, obj: object) -> None:
    path = tmp_path / "other.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match=r"a PyTorch file .* but not a secateurs checkpoint"):
        load_checkpoint(path)


def test_unknown_version_and_bad_payload(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    torch.save({"format": "secateurs-checkpoint", "version": 2, "payload": {}}, path)
    with pytest.raises(CheckpointError, match="version 2 is not supported"):
        load_checkpoint(path)
    torch.save({"format": "secateurs-checkpoint", "version": 1, "payload": [1]}, path)
    with pytest.raises(CheckpointError, match="payload is a list, not a dict"):
        load_checkpoint(path)


def test_arbitrary_python_object_is_refused_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    torch.save({"format": "secateurs-checkpoint", "version": 1, "payload": {"x": _Custom()}}, path)
    with pytest.raises(CheckpointError, match=r"a Python object \(.*_Custom\) that could run code.*refused"):
        load_checkpoint(path)
