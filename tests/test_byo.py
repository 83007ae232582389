"""Bring your own model, data and hardware: recipes on a user's nn.Module factory, a user's data
factory (streamed), CIFAR in its pickle layout and an image folder, with `device: cpu` explicit."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from user_code.models import residual_net

import secateurs
from secateurs.core.errors import ConfigError, DataUnavailableError
from secateurs.core.masks import masks_of
from secateurs.data import DatasetSplits, DataSplits, load_dataset, splits_from
from secateurs.pipeline.hashing import run_hash
from secateurs.pipeline.recipe import recipe_from_raw
from secateurs.pipeline.runner import Pipeline, run_recipe

USER_MODEL = {"factory": "user_code.models:residual_net", "options": {"width": 8}}
USER_DATA = {"factory": "user_code.data:patterns"}
IMP = {
    "schedule": {"name": "iterative", "levels": 2, "rate": 0.4},
    "stages": [{"prune": {}}, {"reset": {"mode": "rewind", "step": 2}}, {"train": {}}],
}
RECIPES: dict[str, list[dict[str, Any]]] = {
    "one-shot": [{"train": {}}, {"prune": {"criterion": "magnitude"}}, {"train": {}}, {"evaluate": {}}],
    "imp-rewind": [{"train": {}}, {"repeat": IMP}, {"evaluate": {}}],
    "rigl": [
        {"prune": {"criterion": "random", "allocation": "erk"}},
        {"train": {"dst": {"method": "rigl", "update_every": 2, "end_fraction": 1.0}}},
        {"evaluate": {}},
    ],
    "channels": [
        {"train": {}},
        {"prune": {"criterion": "l1", "structure": "channel", "allocation": "uniform"}},
        {"train": {}},
        {"evaluate": {}},
    ],
}


def user_recipe(stages: list[dict[str, Any]], **fields: Any) -> dict[str, Any]:
    raw: dict[str, Any] = {
        "name": "byo",
        "model": dict(USER_MODEL),
        "data": dict(USER_DATA),
        "device": "cpu",
        "sparsity": 0.5,
        "train": {"iterations": 20, "batch_size": 32, "optimizer": {"lr": 0.05}},
        "stages": stages,
    }
    raw.update(fields)
    return raw


def same_weights(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return list(sa) == list(sb) and all(torch.equal(sa[k], sb[k]) for k in sa)


class Crash(Exception):
    """Stands in for a kill after a stage ran but before its state was saved."""


def data_source(source: str, folder: Path) -> dict[str, Any]:
    """The recipe's `data` for a user's data set factory, their CIFAR-10 copy or their image folder."""
    if source == "factory":
        return dict(USER_DATA)
    if source == "cifar10":
        return {"cifar10": {"root": str(fake_cifar10(folder / "cifar"))}}
    root = image_folder(folder / "images")
    return {"image_folder": {"train": str(root / "train"), "test": str(root / "test"), "size": 8}}


@pytest.mark.parametrize("source", ["factory", "cifar10", "image_folder"])
@pytest.mark.parametrize("name", list(RECIPES))
def test_a_user_model_on_user_data_runs_every_paradigm_and_resumes_after_a_kill(
    name: str, source: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    recipe = recipe_from_raw(user_recipe(RECIPES[name], data=data_source(source, tmp_path)))
    clean = run_recipe(recipe)
    assert isinstance(clean.model, type(residual_net((3, 8, 8), 3)))
    masks = masks_of(clean.model)
    assert masks is not None and 0.3 < masks.sparsity() < 0.7
    if source == "factory":
        assert clean.records[-1]["accuracy"] > 0.5  # three classes: above chance after a few steps
    original = Pipeline._save_state

    def crash_after_stage_3(self: Pipeline) -> None:
        if self.counter == 3:
            raise Crash
        original(self)

    work = tmp_path / "run"
    with monkeypatch.context() as patch:
        patch.setattr(Pipeline, "_save_state", crash_after_stage_3)
        with pytest.raises(Crash):
            run_recipe(recipe, workdir=work)
    resumed = run_recipe(recipe, workdir=work)
    assert same_weights(resumed.model, clean.model)
    assert resumed.records == clean.records


def test_streamed_data_trains_bit_for_bit_like_the_same_data_in_memory() -> None:
    streamed = run_recipe(recipe_from_raw(user_recipe(RECIPES["imp-rewind"])))
    in_memory_data = {"factory": "user_code.data:pattern_tensors"}
    in_memory = run_recipe(recipe_from_raw(user_recipe(RECIPES["imp-rewind"], data=in_memory_data)))
    assert isinstance(Pipeline(recipe_from_raw(user_recipe([{"evaluate": {}}]))).data, DatasetSplits)
    assert same_weights(streamed.model, in_memory.model)
    assert streamed.records[-1]["accuracy"] == in_memory.records[-1]["accuracy"]


def test_the_same_seed_gives_the_same_user_model_and_masks() -> None:
    a, b = (run_recipe(recipe_from_raw(user_recipe(RECIPES["one-shot"]))) for _ in range(2))
    assert same_weights(a.model, b.model)
    c = run_recipe(recipe_from_raw(user_recipe(RECIPES["one-shot"], seed=1)))
    assert not same_weights(a.model, c.model)


def test_a_module_or_a_factory_passed_in_python_replaces_the_recipes_model() -> None:
    torch.manual_seed(0)
    mine = residual_net((3, 8, 8), 3, width=4)
    before = {k: v.clone() for k, v in mine.state_dict().items()}
    stages = [{"train": {}}, {"prune": {"criterion": "magnitude"}}, {"evaluate": {}}]
    raw = user_recipe(stages, model="mlp")
    result = secateurs.run(raw, model=mine)
    assert result.model is not mine and result.model.stem[0].out_channels == 4
    assert all(
        torch.equal(before[k], v) for k, v in mine.state_dict().items()
    )  # the caller's copy is untouched
    built = secateurs.run(
        raw, model=lambda input_shape, num_classes: residual_net(input_shape, num_classes, width=6)
    )
    assert built.model.stem[0].out_channels == 6


def test_data_passed_in_python_may_be_datasets_loaders_or_tensors() -> None:
    from user_code.data import pattern_tensors, patterns

    train, test = patterns()
    loaders = (torch.utils.data.DataLoader(train, batch_size=7), torch.utils.data.DataLoader(test))
    stages = [{"train": {}}, {"evaluate": {}}]
    results = [
        secateurs.run(user_recipe(stages), data=data) for data in ((train, test), loaders, pattern_tensors())
    ]
    assert isinstance(splits_from(loaders), DatasetSplits) and isinstance(
        splits_from(pattern_tensors()), DataSplits
    )
    assert same_weights(results[0].model, results[1].model)
    assert same_weights(results[0].model, results[2].model)


def test_the_run_hash_covers_the_factory_and_its_options_but_not_the_device() -> None:
    base = recipe_from_raw(user_recipe(RECIPES["one-shot"]))
    other_options = recipe_from_raw(
        user_recipe(RECIPES["one-shot"], model={**USER_MODEL, "options": {"width": 4}})
    )
    same_net_by_class = {"factory": "user_code.models:ResidualNet", "options": {"in_channels": 3, "width": 8}}
    same_net_by_class["options"] |= {"blocks": 2, "drop": 0.1}
    other_factory = recipe_from_raw(user_recipe(RECIPES["one-shot"], model=same_net_by_class))
    elsewhere = recipe_from_raw(
        user_recipe(RECIPES["one-shot"], device="auto", compile=True, channels_last=True)
    )
    assert len({run_hash(base), run_hash(other_options), run_hash(other_factory)}) == 3
    assert run_hash(elsewhere) == run_hash(base)
    assert run_hash(recipe_from_raw(user_recipe(RECIPES["one-shot"], precision="bf16"))) != run_hash(base)


@pytest.mark.parametrize(
    ("model", "message"),
    [
        (
            {"factory": "no_such_package.models:net"},
            "model.factory: cannot import module 'no_such_package.models'",
        ),
        ({"factory": "user_code.models:no_such_net"}, "module 'user_code.models' has no 'no_such_net'"),
        ({"factory": "user_code.models"}, "is not an import path"),
        ({"factory": "user_code.models:residual_net", "options": {"widht": 8}}, "has no option 'widht'"),
        ({"factory": "user_code.models:residual_net", "name": "mlp"}, "not both"),
        ({"factory": "user_code.models:needs_depth"}, "depth: Field required"),
    ],
)
def test_a_bad_model_factory_is_one_error_at_read_time(model: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match="invalid recipe") as err:
        recipe_from_raw(user_recipe(RECIPES["one-shot"], model=model))
    assert message in str(err.value)


def test_a_factory_that_makes_no_model_says_so() -> None:
    model = {"factory": "user_code.models:not_a_module"}
    with pytest.raises(ConfigError, match=r"returned a str, not an nn\.Module"):
        run_recipe(recipe_from_raw(user_recipe(RECIPES["one-shot"], model=model)))


@pytest.mark.parametrize(
    ("device", "error", "message"),
    [
        ("gpu", "invalid recipe", "unknown device 'gpu'; devices are auto, cpu, cuda, cuda:N"),
        ("cuda:x", "invalid recipe", "unknown device 'cuda:x'"),
    ],
)
def test_an_unknown_device_is_refused_when_the_recipe_is_read(device: str, error: str, message: str) -> None:
    with pytest.raises(ConfigError, match=error) as err:
        recipe_from_raw(user_recipe(RECIPES["one-shot"], device=device))
    assert message in str(err.value)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
def test_an_absent_gpu_is_one_error_naming_the_fix() -> None:
    with pytest.raises(ConfigError, match="sees no CUDA GPU") as err:
        run_recipe(recipe_from_raw(user_recipe(RECIPES["one-shot"], device="cuda:1")))
    assert "device: auto or cpu" in str(err.value)


def test_device_cpu_and_auto_on_a_cpu_machine_give_the_same_run() -> None:
    explicit = run_recipe(recipe_from_raw(user_recipe(RECIPES["one-shot"])))
    auto = run_recipe(recipe_from_raw(user_recipe(RECIPES["one-shot"], device="auto")))
    assert all(p.device.type == "cpu" for p in explicit.model.parameters())
    if not torch.cuda.is_available():
        assert same_weights(explicit.model, auto.model)


# -- execution: mixed precision, compile, channels_last -----------------------------------------
def _forward_dtypes(model: nn.Module) -> list[torch.dtype]:
    seen: list[torch.dtype] = []
    head = model.head if hasattr(model, "head") else model

    def record(_: nn.Module, __: Any, out: torch.Tensor) -> None:
        if torch.is_grad_enabled():  # training steps, not evaluation
            seen.append(out.dtype)

    head.register_forward_hook(record)
    return seen


@pytest.mark.parametrize(("precision", "dtype"), [("bf16", torch.bfloat16), ("fp16", torch.float16)])
def test_mixed_precision_trains_in_the_half_type_and_keeps_masks_and_fp32_weights(
    precision: str, dtype: torch.dtype
) -> None:
    stages = [{"prune": {"criterion": "random"}}, {"train": {}}, {"evaluate": {}}]
    pipeline = Pipeline(recipe_from_raw(user_recipe(stages, precision=precision)))
    seen = _forward_dtypes(pipeline.model)
    result = pipeline.run()
    assert seen and set(seen) == {dtype}
    masks = masks_of(result.model)
    assert masks is not None
    for name, param in result.model.named_parameters():
        assert param.dtype == torch.float32
        if name in masks:
            assert torch.count_nonzero(param[~masks[name]]) == 0, name
    assert result.records[-1]["accuracy"] > 0.5


def test_fp16_unscales_gradients_before_admm_and_clipping_see_them() -> None:
    stages = [{"train": {"admm": {"rho": 0.01}, "grad_clip": 1.0}}, {"evaluate": {}}]
    result = run_recipe(recipe_from_raw(user_recipe(stages, precision="fp16")))
    assert result.records[-1]["accuracy"] > 0.5
    assert masks_of(result.model) is not None


def test_compile_trains_through_torch_compile_with_the_same_result() -> None:
    pytest.importorskip("torch._dynamo")
    stages = RECIPES["one-shot"]
    plain = run_recipe(recipe_from_raw(user_recipe(stages)))
    compiled = run_recipe(recipe_from_raw(user_recipe(stages, compile={"backend": "eager"})))
    for (name, a), b in zip(
        plain.model.state_dict().items(), compiled.model.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(a, b, msg=name)


def test_channels_last_stores_conv_weights_channels_last_and_trains_the_same_model() -> None:
    stages = RECIPES["one-shot"]
    plain = run_recipe(recipe_from_raw(user_recipe(stages)))
    last = run_recipe(recipe_from_raw(user_recipe(stages, channels_last=True)))
    conv = last.model.stem[0].weight  # 3x3: the two layouts differ (a 1x1 kernel is both)
    assert conv.is_contiguous(memory_format=torch.channels_last) and not conv.is_contiguous()
    for (name, a), b in zip(plain.model.state_dict().items(), last.model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5, msg=name)


# -- data a user has on disk ----------------------------------------------------------------------
def fake_cifar10(root: Path, per_batch: int = 16) -> Path:
    """The python-pickle layout of CIFAR-10, with a few random images per batch."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [*(f"data_batch_{i}" for i in range(1, 6)), "test_batch"]:
        labels = [int(v) for v in rng.integers(0, 10, per_batch)]
        images = rng.integers(0, 64, (per_batch, 3, 32, 32), dtype=np.uint8)
        for i, label in enumerate(labels):  # a learnable signal: the label's row is bright
            images[i, :, label * 3 : label * 3 + 3, :] = 255
        with (folder / name).open("wb") as f:
            pickle.dump({b"data": images.reshape(per_batch, -1), b"labels": labels}, f)
    with (folder / "batches.meta").open("wb") as f:
        pickle.dump({b"label_names": [f"class{i}".encode() for i in range(10)]}, f)
    return root


def test_cifar10_reads_the_official_pickle_layout(tmp_path: Path) -> None:
    root = fake_cifar10(tmp_path)
    splits = load_dataset("cifar10", root=str(root))
    assert splits.info.input_shape == (3, 32, 32) and splits.info.num_classes == 10
    assert (splits.info.num_train, splits.info.num_test) == (80, 16)
    assert torch.equal(
        load_dataset("cifar10", root=str(root / "cifar-10-batches-py")).train_y, splits.train_y
    )
    stages = [{"train": {}}, {"prune": {"criterion": "snip", "samples_per_class": 2}}, {"evaluate": {}}]
    raw = {
        "sparsity": 0.5,
        "data": {"cifar10": {"root": str(root)}},
        "model": "lenet5",
        "device": "cpu",
        "train": {"iterations": 2},
    }
    result = run_recipe(recipe_from_raw({**raw, "stages": stages}))
    assert result.records[-1]["sparsity"] == pytest.approx(0.5, abs=0.01)


def test_a_cifar_pickle_that_would_run_code_is_refused(tmp_path: Path) -> None:
    root = fake_cifar10(tmp_path)

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (print, ("this must never run",))

    with (root / "cifar-10-batches-py" / "test_batch").open("wb") as f:
        pickle.dump({b"data": Payload(), b"labels": []}, f)
    with pytest.raises(DataUnavailableError, match=r"builtins\.print is not allowed"):
        load_dataset("cifar10", root=str(root))


def test_missing_cifar_files_say_how_to_lay_them_out(tmp_path: Path) -> None:
    with pytest.raises(DataUnavailableError, match="lacks data_batch_1") as err:
        load_dataset("cifar10", root=str(tmp_path))
    assert "unpack the python version" in str(err.value)
    with pytest.raises(ConfigError, match="needs root"):
        load_dataset("cifar100")


def image_folder(root: Path, classes: tuple[str, ...] = ("ants", "bees"), per_class: int = 8) -> Path:
    from PIL import Image

    rng = np.random.default_rng(1)
    for split in ("train", "test"):
        for index, name in enumerate(classes):
            (root / split / name).mkdir(parents=True)
            for i in range(per_class):
                pixels = rng.integers(0, 80, (12, 10, 3), dtype=np.uint8)
                pixels[..., index] = 230  # the class is the bright colour channel
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    (root / "train" / "ants" / "notes.txt").write_text("not an image")
    return root


def test_an_image_folder_streams_resized_normalised_images_through_a_recipe(tmp_path: Path) -> None:
    root = image_folder(tmp_path)
    options = {
        "train": str(root / "train"),
        "test": str(root / "test"),
        "size": 8,
        "mean": [0.5] * 3,
        "std": [0.25] * 3,
    }
    splits = load_dataset("image_folder", **options)
    assert isinstance(splits, DatasetSplits) and splits.info.num_classes == 2
    assert (splits.info.input_shape, splits.info.num_train) == ((3, 8, 8), 16)
    x, y = next(iter(splits.test_loader()))
    assert x.shape == (16, 3, 8, 8) and y.tolist() == [0] * 8 + [1] * 8
    assert torch.allclose(x[:8, 0].mean(), torch.tensor((230 / 255 - 0.5) / 0.25), atol=0.05)
    stages = [{"train": {}}, {"prune": {"criterion": "magnitude", "sparsity": 0.5}}, {"evaluate": {}}]
    raw = {"data": {"image_folder": {**options, "flip": True}}, "model": {**USER_MODEL}, "device": "cpu"}
    raw["train"] = {"iterations": 8, "batch_size": 4}
    first, second = (run_recipe(recipe_from_raw({**raw, "stages": stages})) for _ in range(2))
    assert same_weights(first.model, second.model)  # random flips repeat with the seed


def test_an_image_folder_with_mismatched_classes_is_refused(tmp_path: Path) -> None:
    root = image_folder(tmp_path)
    (root / "test" / "wasps").mkdir()
    with pytest.raises(DataUnavailableError, match="test classes"):
        load_dataset("image_folder", train=str(root / "train"), test=str(root / "test"))


# -- progress and logs for long runs ---------------------------------------------------------------
def test_each_epoch_logs_its_throughput_and_eta(caplog: pytest.LogCaptureFixture) -> None:
    raw = user_recipe([{"train": {"epochs": 2}}, {"evaluate": {}}])
    with caplog.at_level("INFO", logger="secateurs.train.engine"):
        run_recipe(recipe_from_raw(raw))
    lines = [r.getMessage() for r in caplog.records if r.name == "secateurs.train.engine"]
    assert len(lines) == 2  # one per epoch: 192 samples in batches of 32
    assert "step 6/12" in lines[0] and "step 12/12" in lines[1]
    assert all("samples/s, ETA " in line and "test_accuracy=" in line for line in lines)
    assert lines[1].endswith("ETA 0:00:00")


def test_a_csv_metrics_log_gets_every_event_as_it_comes_and_a_resumed_run_appends(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import csv

    log = tmp_path / "logs" / "run.csv"
    stages = [{"train": {"epochs": 2}}, {"prune": {"criterion": "magnitude"}}, {"evaluate": {}}]
    seen: list[int] = []
    original = Pipeline._run_stage

    def count_lines_before_each_stage(self: Pipeline, *args: Any) -> None:
        seen.append(len(log.read_text().splitlines()) if log.exists() else 0)
        original(self, *args)

    monkeypatch.setattr(Pipeline, "_run_stage", count_lines_before_each_stage)
    result = secateurs.run(user_recipe(stages), metrics_log=log)
    rows = list(csv.DictReader(log.open()))
    assert seen[1] > 1  # the training epochs were on disk before the prune stage began
    assert {r["kind"] for r in rows} == {"train", "evaluate"}
    assert [float(r["value"]) for r in rows if r["metric"] == "test_accuracy" and r["step"] == "12"]
    final = [r for r in rows if r["kind"] == "evaluate" and r["metric"] == "accuracy"]
    assert float(final[0]["value"]) == result.records[-1]["accuracy"]
    secateurs.run(user_recipe(stages), metrics_log=log)
    again = list(csv.DictReader(log.open()))
    assert len(again) == 2 * len(rows) and list(again[0]) == [
        "time_s",
        "stage",
        "level",
        "control",
        "kind",
        "step",
        "metric",
        "value",
    ]


def test_a_tensorboard_log_without_tensorboard_says_how_to_get_it(tmp_path: Path) -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="needs the tensorboard package"):
            secateurs.run(user_recipe([{"evaluate": {}}]), metrics_log=tmp_path / "tb")
        return
    secateurs.run(user_recipe([{"train": {}}, {"evaluate": {}}]), metrics_log=tmp_path / "tb")
    assert any((tmp_path / "tb").iterdir())


def test_a_checkpoint_of_a_user_model_is_inspected_by_rebuilding_it_from_its_factory(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from secateurs.front.cli import app

    stages = [{"train": {}}, {"prune": {"criterion": "magnitude"}}, {"evaluate": {}}]
    secateurs.run(user_recipe(stages), out=tmp_path / "run")
    shown = CliRunner().invoke(app, ["inspect", str(tmp_path / "run")])
    assert shown.exit_code == 0, shown.output
    text = " ".join(shown.output.split())  # the console wraps long lines
    assert "model user_code.models:residual_net" in text
    assert "MACs per sample" in text and "sparsity 0.5000" in text
