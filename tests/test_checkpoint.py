"""Specification of `secateurs.core.checkpoint`: exact round trips, atomic writes, safe loads."""

from __future__ import annotations

import hashlib
import io
import os
import re
import struct
import sys
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from tiny import tiny_recipe
from torch import Tensor, nn

from secateurs.core.checkpoint import load_checkpoint, save_checkpoint
from secateurs.core.errors import CheckpointError, ConfigError
from secateurs.core.masks import MaskSet
from secateurs.pipeline.outputs import read_checkpoint
from secateurs.pipeline.recipe import recipe_from_raw
from secateurs.pipeline.runner import STATE_FILE, run_recipe


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
    """A torch.save stand-in that writes part of a file, then fails (in-memory saves still work)."""
    real_save = torch.save

    def fake_save(obj: object, handle: Any, *args: object, **kwargs: object) -> None:
        if isinstance(handle, io.BytesIO):  # the payload serialised before the file is written
            real_save(obj, handle, *args, **kwargs)
            return
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


def _envelope(content: object, **fields: object) -> dict[str, Any]:
    """A version-2 envelope as save_checkpoint writes it, with `fields` replaced."""
    buffer = io.BytesIO()
    torch.save(content, buffer)
    blob = buffer.getvalue()
    envelope = {"format": "secateurs-checkpoint", "version": 2, "sha256": hashlib.sha256(blob).hexdigest()}
    return {**envelope, "payload": torch.frombuffer(bytearray(blob), dtype=torch.uint8), **fields}


def test_unknown_version_and_bad_payload(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    torch.save({"format": "secateurs-checkpoint", "version": 3, "payload": {}}, path)
    with pytest.raises(
        CheckpointError, match=r"version 3 is not supported \(this secateurs reads versions 1, 2\)"
    ):
        load_checkpoint(path)
    torch.save({"format": "secateurs-checkpoint", "version": 1, "payload": [1]}, path)
    with pytest.raises(CheckpointError, match="payload is a list, not a dict"):
        load_checkpoint(path)
    torch.save(_envelope([1]), path)
    with pytest.raises(CheckpointError, match="payload is a list, not a dict"):
        load_checkpoint(path)


# -- checksums (version 2) and version-1 files --------------------------------------------------


def test_file_is_a_version_2_envelope_holding_the_sha256_of_its_payload(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"w": torch.arange(10.0), "step": 3})
    envelope = torch.load(path, weights_only=True)
    assert sorted(envelope) == ["format", "payload", "sha256", "version"]
    assert (envelope["format"], envelope["version"]) == ("secateurs-checkpoint", 2)
    blob = envelope["payload"].numpy().tobytes()
    assert envelope["payload"].dtype == torch.uint8
    assert envelope["sha256"] == hashlib.sha256(blob).hexdigest()
    inner = torch.load(io.BytesIO(blob), weights_only=True)
    _assert_identical(inner, {"w": torch.arange(10.0), "step": 3})


def test_version_1_files_without_a_checksum_still_load(tmp_path: Path) -> None:
    path = tmp_path / "old.pt"
    payload = {"model": {"w": torch.arange(6.0).reshape(2, 3)}, "masks": {"w": torch.ones(2, 3) > 0}}
    torch.save({"format": "secateurs-checkpoint", "version": 1, "payload": payload}, path)
    _assert_identical(load_checkpoint(path), payload)


def _storage_offset(path: Path, record: str) -> int:
    """Where the bytes of zip member `record` (stored, uncompressed) start in the file."""
    with zipfile.ZipFile(path) as archive:
        info = next(i for i in archive.infolist() if i.filename.endswith(record))
    data = path.read_bytes()
    name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
    return info.header_offset + 30 + name_len + extra_len


def test_a_flipped_bit_in_tensor_data_loads_silently_without_a_checksum(tmp_path: Path) -> None:
    """Why version 2 exists: torch itself does not notice a changed weight (the version-1 layout)."""
    path = tmp_path / "old.pt"
    torch.save({"format": "secateurs-checkpoint", "version": 1, "payload": {"w": torch.arange(1000.0)}}, path)
    data = bytearray(path.read_bytes())
    data[_storage_offset(path, "data/0") + 400] ^= 0x01
    path.write_bytes(bytes(data))
    assert int((load_checkpoint(path)["w"] != torch.arange(1000.0)).sum()) == 1


@pytest.mark.parametrize("where", [0.1, 0.5, 0.9, 0.999])
def test_a_flipped_bit_anywhere_in_the_payload_is_detected(tmp_path: Path, where: float) -> None:
    path = tmp_path / "ck.pt"
    save_checkpoint(path, {"model": {"w": torch.arange(1000.0)}, "step": 7})
    envelope = torch.load(path, weights_only=True)
    envelope["payload"][int(len(envelope["payload"]) * where)] ^= 0x01
    torch.save(envelope, path)  # still a well-formed file
    with pytest.raises(
        CheckpointError,
        match=rf"^{re.escape(str(path))}: the checkpoint does not match its SHA-256 checksum: it was "
        r"modified or corrupted after it was written, so it was not loaded Fix: delete the file; a run "
        r"resumes from an earlier checkpoint or restarts from scratch",
    ):
        load_checkpoint(path)


def test_a_flipped_bit_inside_a_weight_of_the_file_on_disk_is_detected(tmp_path: Path) -> None:
    """Flip a bit of a weight inside the file as stored on disk (the payload is stored uncompressed)."""
    path = tmp_path / "ck.pt"
    weights = torch.arange(1000.0)
    save_checkpoint(path, {"w": weights})
    data = bytearray(path.read_bytes())
    at = bytes(data).index(weights[500:510].numpy().tobytes())  # the weight bytes, inside the payload
    data[at] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="does not match its SHA-256 checksum"):
        load_checkpoint(path)


@pytest.mark.parametrize(
    "fields",
    [
        {"sha256": None},
        {"sha256": "abc"},
        {"sha256": "A" * 64},
        {"payload": {"w": 1}},
        {"payload": None},
        {"payload": b"PK"},
        {"payload": torch.zeros(4, dtype=torch.int8)},
        {"payload": torch.zeros(2, 2, dtype=torch.uint8)},
    ],
)
def test_a_damaged_envelope_is_refused(tmp_path: Path, fields: dict[str, Any]) -> None:
    path = tmp_path / "ck.pt"
    torch.save(_envelope({"w": torch.ones(2)}, **fields), path)
    with pytest.raises(CheckpointError, match=r"envelope is damaged .*Fix: delete the file"):
        load_checkpoint(path)


def test_a_payload_with_a_matching_checksum_is_still_loaded_weights_only(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    torch.save(_envelope({"x": _Custom()}), path)  # a crafted file: the checksum proves nothing
    with pytest.raises(CheckpointError, match=r"a Python object \(.*_Custom\) that could run code.*refused"):
        load_checkpoint(path)


def test_arbitrary_python_object_is_refused_not_unpickled(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    torch.save({"format": "secateurs-checkpoint", "version": 1, "payload": {"x": _Custom()}}, path)
    with pytest.raises(CheckpointError, match=r"a Python object \(.*_Custom\) that could run code.*refused"):
        load_checkpoint(path)


# -- masks that do not fit their weights ----------------------------------------------------------


def _run_checkpoint(path: Path, masks: dict[str, Tensor]) -> None:
    """A model.pt as `secateurs run` writes it, with the given masks."""
    weights = {"features.1.weight": torch.ones(16, 20), "classifier.weight": torch.ones(3, 16)}
    save_checkpoint(path, {"model": weights, "masks": masks, "meta": {"model": "mlp"}})


@pytest.mark.parametrize(
    ("masks", "message"),
    [
        (
            {
                "features.1.weight": torch.ones(16, 20, dtype=torch.bool),
                "classifier.weight": torch.ones(1, 16) > 0,
            },
            r"the mask for 'classifier.weight' has shape \(1, 16\) but the weight has shape \(3, 16\)",
        ),
        (
            {"features.1.weight": torch.ones(20, 16, dtype=torch.bool)},
            r"the mask for 'features.1.weight' has shape \(20, 16\) but the weight has shape \(16, 20\)",
        ),
        (
            {"features.2.weight": torch.ones(16, 20, dtype=torch.bool)},
            r"a mask for 'features.2.weight' but no such weight "
            r"\(weights: features.1.weight, classifier.weight\)",
        ),
    ],
)
def test_reading_a_run_checkpoint_whose_masks_do_not_fit_its_weights(
    tmp_path: Path, masks: dict[str, Tensor], message: str
) -> None:
    path = tmp_path / "model.pt"
    _run_checkpoint(path, masks)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: .*{message}.* Fix: the masks come"):
        read_checkpoint(path)
    with pytest.raises(CheckpointError, match=message):  # also as a run directory
        read_checkpoint(tmp_path)


def test_init_from_a_checkpoint_with_a_wrong_mask_names_the_file(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    _run_checkpoint(path, {"classifier.weight": torch.ones(16, 3) > 0})
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(path))}: the mask for 'classifier.weight'"):
        run_recipe(recipe_from_raw(tiny_recipe(init_from=str(path))))


@pytest.mark.parametrize(
    ("name", "mask", "message"),
    [
        ("classifier.weight", torch.ones(1, 16) > 0, r"mask for 'classifier.weight' has shape \(1, 16\), "
         r"parameter has \(3, 16\)"),
        ("classifier.weight", torch.ones(16, 3) > 0, r"has shape \(16, 3\), parameter has \(3, 16\)"),
        ("features.9.weight", torch.ones(3, 16) > 0, r"mask names parameter 'features.9.weight', which the "
         "model does not have"),
    ],
)  # fmt: skip
def test_resuming_from_a_state_whose_mask_does_not_fit_the_model_fails_clearly(
    tmp_path: Path, name: str, mask: Tensor, message: str
) -> None:
    """Never a broadcast (a (1, 16) mask would broadcast over (3, 16)) nor a bare RuntimeError."""
    recipe = recipe_from_raw(tiny_recipe())
    run_recipe(recipe, workdir=tmp_path)
    state = load_checkpoint(tmp_path / STATE_FILE)
    state["masks"][name] = mask
    save_checkpoint(tmp_path / STATE_FILE, state)
    with pytest.raises(CheckpointError, match=message):
        run_recipe(recipe, workdir=tmp_path)


def test_updating_attached_masks_with_a_broadcastable_shape_is_refused() -> None:
    model = _model()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    handle = MaskSet({"0.weight": torch.ones(3, 4, dtype=torch.bool)}).attach(model, opt)
    with pytest.raises(
        ConfigError, match=r"new mask for '0.weight' has shape \(1, 4\), the parameter has \(3, 4\)"
    ):
        handle.update(MaskSet({"0.weight": torch.zeros(1, 4, dtype=torch.bool)}))
    _sgd_step(model, opt)
    assert bool((model[0].weight != 0).all())  # the refused update changed nothing
    handle.update(MaskSet({"0.weight": torch.tensor([[True, False, True, False]] * 3)}))
    _sgd_step(model, opt)
    assert torch.equal(model[0].weight != 0, torch.tensor([[True, False, True, False]] * 3))
