"""Specifications of the training engine, optimizers and LR schedules (tiny models, inline data)."""

from __future__ import annotations

import io
import math
import pickle
from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from secateurs.core.errors import ConfigError, SecateursError
from secateurs.core.masks import MaskSet, set_masks
from secateurs.train import (
    AtStep,
    Callback,
    EveryNEpochs,
    EveryNSteps,
    LambdaCallback,
    LRScheduleConfig,
    OptimizerConfig,
    StopAtStep,
    TrainConfig,
    TrainState,
    build_lr_scheduler,
    build_optimizer,
    train,
)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny models run far faster on one thread (no OpenMP hand-offs on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --------------------------------------------------------------------------------------------
# fixtures: a tiny learnable problem and a loader with len() and set_epoch()
# --------------------------------------------------------------------------------------------


class Batches:
    """Fixed batches, reshuffled per epoch from (seed, epoch) like a real loader."""

    def __init__(self, x: Tensor, y: Tensor, batch_size: int, seed: int = 0) -> None:
        self.x, self.y, self.batch_size, self.seed = x, y, batch_size, seed
        self.epochs_set: list[int] = []
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epochs_set.append(epoch)
        self.epoch = epoch

    def __len__(self) -> int:
        return math.ceil(len(self.x) / self.batch_size)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        g = torch.Generator().manual_seed(self.seed * 1000 + self.epoch)
        order = torch.randperm(len(self.x), generator=g)
        for i in range(0, len(order), self.batch_size):
            idx = order[i : i + self.batch_size]
            yield self.x[idx], self.y[idx]


def make_data(n: int = 64, batch_size: int = 16) -> Batches:
    g = torch.Generator().manual_seed(123)
    x = torch.randn(n, 8, generator=g)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return Batches(x, y, batch_size)


def make_model(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(7)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Dropout(dropout), nn.Linear(16, 2))


def accuracy_fn(loader: Batches):
    def evaluate(model: nn.Module) -> dict[str, float]:
        with torch.no_grad():
            logits = model(loader.x)
        return {
            "accuracy": (logits.argmax(1) == loader.y).float().mean().item(),
            "loss": F.cross_entropy(logits, loader.y).item(),
            "n": float(len(loader.y)),
        }

    return evaluate


def cfg(**kw: object) -> TrainConfig:
    kw.setdefault("optimizer", OptimizerConfig(name="sgd", lr=0.1, momentum=0.0))
    return TrainConfig(**kw)


# --------------------------------------------------------------------------------------------
# masks stay exactly zero
# --------------------------------------------------------------------------------------------

OPTIMIZERS = {
    "sgd-nesterov": OptimizerConfig(name="sgd", lr=0.05, momentum=0.9, nesterov=True, weight_decay=5e-4),
    "adam": OptimizerConfig(name="adam", lr=0.01, weight_decay=5e-4),
    "adamw": OptimizerConfig(name="adamw", lr=0.01, weight_decay=0.05),
}
STATE_KEYS = {"sgd-nesterov": ["momentum_buffer"], "adam": ["exp_avg", "exp_avg_sq"], "adamw": ["exp_avg"]}


def random_masks(model: nn.Module) -> MaskSet:
    g = torch.Generator().manual_seed(5)
    return MaskSet(
        {n: torch.rand(p.shape, generator=g) < 0.5 for n, p in model.named_parameters() if p.ndim > 1}
    )


@pytest.mark.parametrize("mask_grads", [False, True])
@pytest.mark.parametrize("opt", list(OPTIMIZERS))
def test_masked_weights_stay_exactly_zero(opt: str, mask_grads: bool) -> None:
    model = make_model()
    masks = random_masks(model)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    config = cfg(iterations=50, optimizer=OPTIMIZERS[opt], mask_grads=mask_grads)
    result = train(model, make_data(), config, masks=masks)

    assert result.steps == 50
    params = dict(model.named_parameters())
    index = {n: i for i, n in enumerate(params)}
    for name, keep in masks.items():
        w = params[name].detach()
        assert torch.equal(w[~keep], torch.zeros(int((~keep).sum())))
        changed = (w[keep] != before[name][keep]).float().mean().item()
        assert changed > 0.5, f"{name}: only {changed:.0%} of kept weights moved"
        state = result.optimizer_state["state"][index[name]]
        for key in STATE_KEYS[opt]:
            pruned_state = state[key][~keep]
            if mask_grads:
                assert torch.equal(pruned_state, torch.zeros_like(pruned_state)), key
            else:  # without gradient masking the optimizer keeps accumulating for pruned entries
                assert pruned_state.abs().sum() > 0, key


def test_masks_recorded_on_model_are_used_by_default() -> None:
    model = make_model()
    masks = random_masks(model)
    set_masks(model, masks)
    train(model, make_data(), cfg(iterations=20, optimizer=OPTIMIZERS["sgd-nesterov"]))
    for name, p in model.named_parameters():
        if name in masks:
            assert torch.equal(p.detach()[~masks[name]], torch.zeros(int((~masks[name]).sum())))


def test_rewound_optimizer_state_is_masked_when_mask_grads() -> None:
    model = make_model()
    config = cfg(iterations=5, optimizer=OPTIMIZERS["sgd-nesterov"])
    optimizer = build_optimizer(model.parameters(), config.optimizer)
    train(model, make_data(), config, optimizer=optimizer)  # dense: momentum everywhere
    masks = random_masks(model)
    result = train(
        model, make_data(), config.model_copy(update={"iterations": 3, "mask_grads": True}),
        masks=masks, optimizer=optimizer,
    )  # fmt: skip
    index = {n: i for i, (n, _) in enumerate(model.named_parameters())}
    for name, keep in masks.items():
        buf = result.optimizer_state["state"][index[name]]["momentum_buffer"]
        assert torch.equal(buf[~keep], torch.zeros(int((~keep).sum())))


def test_masks_detached_after_training() -> None:
    model = make_model()
    masks = random_masks(model)
    config = cfg(iterations=3)
    optimizer = build_optimizer(model.parameters(), config.optimizer)
    train(model, make_data(), config, masks=masks, optimizer=optimizer)
    # the step hooks are gone: a plain step now moves pruned weights
    model(torch.randn(4, 8)).sum().backward()
    optimizer.step()
    w = model[0].weight.detach()
    assert (w[~masks["0.weight"]] != 0).any()


# --------------------------------------------------------------------------------------------
# determinism
# --------------------------------------------------------------------------------------------


def weights_after(seed: int) -> dict[str, Tensor]:
    model = make_model(dropout=0.3)
    config = cfg(epochs=2, optimizer=OPTIMIZERS["sgd-nesterov"])
    train(model, make_data(), config, seed=seed)
    return model.state_dict()


def test_same_seed_is_bit_identical_and_different_seed_differs() -> None:
    a, b, c = weights_after(0), weights_after(0), weights_after(1)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


def test_progress_bar_does_not_change_results() -> None:
    m1, m2 = make_model(), make_model()
    train(m1, make_data(), cfg(iterations=12), progress=False)
    train(m2, make_data(), cfg(iterations=12), progress=True)
    assert all(torch.equal(m1.state_dict()[k], m2.state_dict()[k]) for k in m1.state_dict())


# --------------------------------------------------------------------------------------------
# LR schedules: exact values against closed forms
# --------------------------------------------------------------------------------------------

BASE_LR = 0.1


def lrs(config: LRScheduleConfig, total: int, spe: int = 10, in_epochs: bool = True) -> list[float]:
    """lrs[t] = learning rate after t scheduler steps (the lr used by optimizer step t+1)."""
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    sched = build_lr_scheduler(
        opt, config, total_steps=total, steps_per_epoch=spe, budget_in_epochs=in_epochs
    )
    out = [opt.param_groups[0]["lr"]]
    for _ in range(total):
        opt.step()
        sched.step()
        out.append(opt.param_groups[0]["lr"])
    return out


def assert_close(actual: list[float], expected: list[float]) -> None:
    assert len(actual) == len(expected)
    for t, (a, e) in enumerate(zip(actual, expected, strict=True)):
        assert abs(a - e) <= 1e-12, f"t={t}: {a} != {e}"


def test_constant_schedule() -> None:
    assert lrs(LRScheduleConfig(), 20) == [BASE_LR] * 21


def test_step_schedule_milestones_in_epochs() -> None:
    got = lrs(LRScheduleConfig(name="step", milestones=[2, 3.5], gamma=0.5), total=50, spe=10)
    expected = [BASE_LR * 0.5 ** ((t >= 20) + (t >= 35)) for t in range(51)]
    assert_close(got, expected)
    assert got[19] == BASE_LR and abs(got[20] - 0.05) < 1e-15 and abs(got[35] - 0.025) < 1e-15


def test_step_schedule_milestones_in_iterations() -> None:
    got = lrs(LRScheduleConfig(name="step", milestones=[7], gamma=0.1), total=12, in_epochs=False)
    assert_close(got, [BASE_LR * (0.1 if t >= 7 else 1.0) for t in range(13)])


def test_cosine_schedule_matches_closed_form() -> None:
    got = lrs(LRScheduleConfig(name="cosine", min_lr=0.001), total=100)
    expected = [0.001 + (BASE_LR - 0.001) * 0.5 * (1 + math.cos(math.pi * t / 100)) for t in range(101)]
    assert_close(got, expected)
    assert abs(got[50] - (0.001 + BASE_LR) / 2) <= 1e-12 and abs(got[100] - 0.001) <= 1e-12


def test_linear_schedule() -> None:
    got = lrs(LRScheduleConfig(name="linear", min_lr=0.01), total=40)
    assert_close(got, [BASE_LR - (BASE_LR - 0.01) * t / 40 for t in range(41)])


@pytest.mark.parametrize("warmup", [{"warmup_steps": 10}, {"warmup_epochs": 0.5}])
def test_warmup_then_cosine(warmup: dict[str, float]) -> None:
    config = LRScheduleConfig(name="cosine", warmup_start_factor=0.1, **warmup)
    got = lrs(config, total=100, spe=20)
    ramp = [BASE_LR * (0.1 + 0.9 * t / 10) for t in range(10)]
    main = [BASE_LR * 0.5 * (1 + math.cos(math.pi * (t - 10) / 90)) for t in range(10, 101)]
    assert_close(got, ramp + main)
    assert abs(got[0] - 0.01) <= 1e-12 and got[10] == BASE_LR


def test_warmup_then_step() -> None:
    config = LRScheduleConfig(name="step", milestones=[6], gamma=0.2, warmup_steps=4, warmup_start_factor=0.5)
    got = lrs(config, total=10, in_epochs=False)
    ramp = [BASE_LR * (0.5 + 0.5 * t / 4) for t in range(4)]
    assert_close(got, [*ramp, BASE_LR, BASE_LR] + [BASE_LR * 0.2] * 5)


def test_scheduler_state_dict_resumes_exactly() -> None:
    config = LRScheduleConfig(name="cosine", min_lr=0.002, warmup_steps=5)
    full = lrs(config, total=30)
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    sched = build_lr_scheduler(opt, config, total_steps=30, steps_per_epoch=10, budget_in_epochs=True)
    for _ in range(12):
        opt.step()
        sched.step()
    buf = io.BytesIO()
    torch.save(pickle.dumps(sched.state_dict()), buf)
    buf.seek(0)
    opt2 = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    sched2 = build_lr_scheduler(opt2, config, total_steps=30, steps_per_epoch=10, budget_in_epochs=True)
    sched2.load_state_dict(pickle.loads(torch.load(buf, weights_only=False)))
    opt2.param_groups[0]["lr"] = sched2.get_last_lr()[0]
    resumed = [opt2.param_groups[0]["lr"]]
    for _ in range(18):
        opt2.step()
        sched2.step()
        resumed.append(opt2.param_groups[0]["lr"])
    assert_close(resumed, full[12:])


def test_training_uses_the_schedule_each_step() -> None:
    seen: dict[int, float] = {}
    record = LambdaCallback(on_step_end=lambda s: seen.__setitem__(s.step, s.optimizer.param_groups[0]["lr"]))
    config = cfg(epochs=3, lr_schedule=LRScheduleConfig(name="step", milestones=[1, 2], gamma=0.1))
    train(make_model(), make_data(), config, callbacks=[record])  # 4 steps per epoch
    expected = {k: BASE_LR * 0.1 ** ((k >= 4) + (k >= 8)) for k in range(1, 13)}
    assert seen.keys() == expected.keys()
    assert all(abs(seen[k] - expected[k]) <= 1e-12 for k in expected)


# --------------------------------------------------------------------------------------------
# configuration errors
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "match"),
    [
        (OptimizerConfig(name="sgd", momentum=0.0, nesterov=True), "nesterov=True needs a momentum"),
        (OptimizerConfig(name="adam", nesterov=True), "'adam' does not use nesterov"),
        (OptimizerConfig(name="adamw", momentum=0.5), "'adamw' does not use momentum"),
        (OptimizerConfig(name="sgd", betas=(0.8, 0.9)), "'sgd' does not use betas"),
    ],
)
def test_optimizer_rejects_meaningless_options(config: OptimizerConfig, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        build_optimizer(nn.Linear(2, 2).parameters(), config)


def test_optimizers_are_configured_as_asked() -> None:
    params = list(nn.Linear(2, 2).parameters())
    sgd = build_optimizer(params, OPTIMIZERS["sgd-nesterov"])
    adamw = build_optimizer(params, OPTIMIZERS["adamw"])
    assert type(sgd) is torch.optim.SGD and type(adamw) is torch.optim.AdamW
    assert sgd.param_groups[0]["nesterov"] is True and sgd.param_groups[0]["weight_decay"] == 5e-4
    assert adamw.param_groups[0]["weight_decay"] == 0.05


@pytest.mark.parametrize(
    ("config", "total", "in_epochs", "match"),
    [
        (LRScheduleConfig(name="cosine", milestones=[3]), 50, True, "does not use milestones"),
        (LRScheduleConfig(name="constant", min_lr=0.01), 50, True, "does not use min_lr"),
        (LRScheduleConfig(name="cosine", min_lr=0.5), 50, True, "above the learning rate"),
        (LRScheduleConfig(name="cosine", warmup_steps=50), 50, True, "leaves nothing"),
        (LRScheduleConfig(name="cosine", warmup_epochs=0.01), 50, True, "less than one iteration"),
        (LRScheduleConfig(name="cosine", warmup_start_factor=0.5), 50, True, "no warm-up"),
        (LRScheduleConfig(name="step", milestones=[2.5]), 50, False, "not a whole number"),
        (LRScheduleConfig(name="step", milestones=[1], warmup_steps=10), 50, True, "not after the warm-up"),
    ],
)
def test_schedule_rejects_meaningless_options(
    config: LRScheduleConfig, total: int, in_epochs: bool, match: str
) -> None:
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=BASE_LR)
    with pytest.raises(ConfigError, match=match):
        build_lr_scheduler(opt, config, total_steps=total, steps_per_epoch=10, budget_in_epochs=in_epochs)


def test_loader_without_len_or_too_short_budget_is_an_error() -> None:
    data = make_data()
    with pytest.raises(ConfigError, match="has no len"):
        train(make_model(), iter(list(data)), cfg(iterations=3))
    with pytest.raises(ConfigError, match="less than one step"):
        train(make_model(), data, cfg(epochs=0.1))  # 0.1 * 4 batches rounds to 0


# --------------------------------------------------------------------------------------------
# budgets and callbacks
# --------------------------------------------------------------------------------------------


class Recorder(Callback):
    def __init__(self) -> None:
        self.events: list[tuple[str, int, int]] = []

    def on_train_start(self, state: TrainState) -> None:
        self.events.append(("start", state.step, state.epoch))

    def on_epoch_end(self, state: TrainState) -> None:
        self.events.append(("epoch", state.step, state.epoch))

    def on_train_end(self, state: TrainState) -> None:
        self.events.append(("end", state.step, state.epoch))


def test_iteration_budget_crosses_epochs_and_stops_exactly() -> None:
    data, rec, steps = make_data(), Recorder(), []
    record_step = LambdaCallback(on_step_end=lambda s: steps.append(s.step))
    result = train(make_model(), data, cfg(iterations=10), callbacks=[rec, record_step])
    assert result.steps == 10 and steps == list(range(1, 11))
    assert result.epochs == 2.5
    assert data.epochs_set == [0, 1, 2]
    assert rec.events == [("start", 0, 0), ("epoch", 4, 1), ("epoch", 8, 2), ("end", 10, 2)]


def test_fractional_epochs() -> None:
    result = train(make_model(), make_data(), cfg(epochs=1.75))  # 1.75 * 4 = 7 steps
    assert result.steps == 7 and result.epochs == 1.75


def test_at_step_fires_once_with_state_step() -> None:
    fired: list[int] = []
    at7 = AtStep(7, lambda s: fired.append(s.step))
    at0 = AtStep(0, lambda s: fired.append(-s.step))
    never = AtStep(99, lambda s: fired.append(99))
    train(make_model(), make_data(), cfg(iterations=12), callbacks=[at7, at0, never])
    assert fired == [0, 7]


def test_every_n_steps_and_epochs() -> None:
    steps: list[int] = []
    epochs: list[int] = []
    callbacks = [
        EveryNSteps(3, lambda s: steps.append(s.step)),
        EveryNEpochs(2, lambda s: epochs.append(s.epoch)),
    ]
    train(make_model(), make_data(), cfg(iterations=17), callbacks=callbacks)
    assert steps == [3, 6, 9, 12, 15] and epochs == [2, 4]
    with pytest.raises(ConfigError, match="positive"):
        EveryNSteps(0, print)


def test_stop_flag_ends_training_early() -> None:
    evaluations: list[int] = []

    def evaluate(model: nn.Module) -> dict[str, float]:
        evaluations.append(1)
        return {"accuracy": 0.5, "loss": 1.0}

    result = train(make_model(), make_data(), cfg(epochs=5), callbacks=[StopAtStep(6)], evaluate_fn=evaluate)
    assert result.steps == 6
    assert [row["step"] for row in result.history] == [4, 6]  # epoch 1, then the final evaluation
    assert len(evaluations) == 2


# --------------------------------------------------------------------------------------------
# divergence
# --------------------------------------------------------------------------------------------


def test_divergence_with_huge_learning_rate() -> None:
    model = nn.Linear(8, 1)
    data = make_data()
    config = TrainConfig(iterations=200, optimizer=OptimizerConfig(lr=1e6, momentum=0.9))

    def mse(out: Tensor, y: Tensor) -> Tensor:
        return F.mse_loss(out.squeeze(1), y.float())

    with pytest.raises(SecateursError, match="diverged at step") as info:
        train(model, data, config, loss_fn=mse)
    assert "lower the learning rate" in str(info.value)


def test_injected_nan_reports_the_exact_step() -> None:
    calls = [0]

    def loss_fn(out: Tensor, y: Tensor) -> Tensor:
        calls[0] += 1
        loss = F.cross_entropy(out, y)
        return loss * math.nan if calls[0] == 7 else loss

    with pytest.raises(SecateursError, match=r"training diverged at step 7 \(loss=nan\)"):
        train(make_model(), make_data(), cfg(iterations=100), loss_fn=loss_fn)


# --------------------------------------------------------------------------------------------
# evaluation history and learning
# --------------------------------------------------------------------------------------------


def test_history_one_row_per_epoch_and_final() -> None:
    data = make_data()
    losses: list[float] = []
    modes: list[bool] = []

    def loss_fn(out: Tensor, y: Tensor) -> Tensor:
        loss = F.cross_entropy(out, y)
        losses.append(loss.item())
        return loss

    evaluate = accuracy_fn(data)

    def eval_fn(model: nn.Module) -> dict[str, float]:
        modes.append(model.training)
        return evaluate(model)

    model = make_model()
    result = train(model, data, cfg(epochs=3), evaluate_fn=eval_fn, loss_fn=loss_fn)
    assert [(r["epoch"], r["step"]) for r in result.history] == [(1.0, 4), (2.0, 8), (3.0, 12)]
    assert modes == [False, False, False] and model.training
    assert set(result.history[0]) == {
        "epoch",
        "step",
        "train_loss",
        "lr",
        "test_accuracy",
        "test_loss",
        "test_n",
    }
    for epoch, row in enumerate(result.history):
        assert row["train_loss"] == math.fsum(losses[4 * epoch : 4 * epoch + 4]) / 4
    assert result.final == result.history[-1]

    partial = train(make_model(), data, cfg(epochs=2.5), evaluate_fn=evaluate)
    assert [r["step"] for r in partial.history] == [4, 8, 10]
    assert partial.final["epoch"] == 2.5

    once = train(make_model(), data, cfg(epochs=2, eval_every_epoch=False), evaluate_fn=evaluate)
    assert [r["step"] for r in once.history] == [8]


@pytest.mark.parametrize(
    ("budget", "every", "steps"),
    [
        ({"iterations": 10}, 3, [3, 6, 9, 10]),  # floor(10/3) = 3 evaluations, then the final one
        ({"epochs": 3}, 4, [4, 8, 12]),  # 4 steps per epoch: the last one is the final
        ({"epochs": 3}, 7, [7, 12]),  # across an epoch boundary
        ({"epochs": 2.5}, 1, list(range(1, 11))),
    ],
)
def test_eval_every_evaluates_after_every_nth_step_and_at_the_end(
    budget: dict[str, float], every: int, steps: list[int]
) -> None:
    data = make_data()  # 4 steps per epoch
    losses: list[float] = []

    def loss_fn(out: Tensor, y: Tensor) -> Tensor:
        loss = F.cross_entropy(out, y)
        losses.append(loss.item())
        return loss

    result = train(
        make_model(), data, cfg(**budget, eval_every=every), evaluate_fn=accuracy_fn(data), loss_fn=loss_fn
    )
    total = result.steps
    assert len(result.history) == total // every + (total % every != 0)
    assert [r["step"] for r in result.history] == steps
    assert [r["epoch"] for r in result.history] == [s / 4 for s in steps]
    for row in result.history:  # the mean loss of the current epoch's steps up to this one
        step = int(row["step"])
        first = 4 * ((step - 1) // 4)
        assert row["train_loss"] == math.fsum(losses[first:step]) / (step - first)


def test_eval_every_evaluates_the_weights_of_that_step_and_changes_no_training() -> None:
    data = make_data()
    evaluate = accuracy_fn(data)
    stepped = make_model(dropout=0.5)  # dropout draws from the RNG: evaluations must not shift it
    result = train(stepped, data, cfg(iterations=9, eval_every=2), evaluate_fn=evaluate)
    again = train(make_model(dropout=0.5), data, cfg(iterations=9, eval_every=2), evaluate_fn=evaluate)
    assert result.history == again.history  # same seed, same metrics
    for row in result.history:
        short = make_model(dropout=0.5)
        train(short, data, cfg(iterations=int(row["step"])))
        short.eval()
        assert evaluate(short) == {k[5:]: v for k, v in row.items() if k.startswith("test_")}
    plain = make_model(dropout=0.5)
    train(plain, data, cfg(iterations=9), evaluate_fn=evaluate)
    for a, b in zip(plain.parameters(), stepped.parameters(), strict=True):
        assert torch.equal(a, b)


def test_eval_every_is_checked_when_read_and_against_the_budget() -> None:
    with pytest.raises(ValueError, match="greater than 0"):
        cfg(iterations=10, eval_every=0)
    with pytest.raises(ValueError, match="eval_every=11 is more than the 10 iterations"):
        cfg(iterations=10, eval_every=11)
    with pytest.raises(ValueError, match="give eval_every \\(steps\\) or eval_every_epoch, not both"):
        cfg(epochs=1, eval_every=2, eval_every_epoch=True)
    assert cfg(epochs=1, eval_every=2, eval_every_epoch=False).eval_every == 2
    with pytest.raises(
        ConfigError, match=r"train\.eval_every: eval_every=9 is more than this training's 8 steps"
    ):
        train(make_model(), make_data(), cfg(epochs=2, eval_every=9), evaluate_fn=accuracy_fn(make_data()))


def test_without_evaluate_fn_final_has_train_loss() -> None:
    result = train(make_model(), make_data(), cfg(iterations=6))
    assert result.history == []
    assert result.final["step"] == 6 and math.isfinite(result.final["train_loss"])


def test_training_reduces_the_loss() -> None:
    data = make_data(n=128, batch_size=16)
    evaluate = accuracy_fn(data)
    model = make_model()
    before = evaluate(model)
    config = cfg(
        epochs=15,
        optimizer=OptimizerConfig(lr=0.1, momentum=0.9),
        lr_schedule=LRScheduleConfig(name="cosine"),
    )
    result = train(model, data, config, evaluate_fn=evaluate)
    assert result.final["test_loss"] < 0.5 * before["loss"]
    assert result.final["test_accuracy"] >= 0.95
    assert result.history[-1]["train_loss"] < result.history[0]["train_loss"]


def test_grad_clip_bounds_the_update() -> None:
    model = make_model()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    config = cfg(iterations=1, optimizer=OptimizerConfig(lr=1.0, momentum=0.0), grad_clip=0.01)
    train(model, make_data(), config)
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    assert 0.0099 < (after - before).norm().item() <= 0.01 + 1e-6


def test_bn_l1_adds_the_l1_subgradient_to_every_batchnorm_scale() -> None:
    """Network slimming: one SGD step with bn_l1 = λ moves γ by exactly −lr·λ·sign(γ) more."""
    from torch import nn

    from secateurs.methods.training.slimming import SlimmingPenalty
    from secateurs.train import TrainConfig, train

    def run(bn_l1: float) -> torch.Tensor:
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
        with torch.no_grad():
            model[1].weight.copy_(torch.tensor([0.5, -0.3, 1.0, -2.0, 0.7, 0.1]))
        x, y = torch.randn(8, 4, generator=torch.Generator().manual_seed(1)), torch.tensor([0, 1] * 4)
        config = TrainConfig(iterations=1, batch_size=8, optimizer={"lr": 0.5, "momentum": 0.0})
        train(model, [(x, y)], config, callbacks=[SlimmingPenalty(model, bn_l1)])
        return model[1].weight.detach()

    plain, slim = run(0.0), run(0.1)
    expected = -0.5 * 0.1 * torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, 1.0])
    torch.testing.assert_close(slim - plain, expected, rtol=0, atol=1e-6)
