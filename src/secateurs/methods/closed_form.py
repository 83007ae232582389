"""Closed-form (non-gradient) training of MLPs, after the Non-Gradient Manifold Neural Network
(Zhang, Jiao, Zhang & Li 2021, arXiv:2106.07905).

Every layer is solved in closed form, never by gradient descent:

- **Forward ridge regression.** A hidden layer `h = σ(Wx + b)` with an invertible activation σ
  (leaky ReLU with a positive slope, tanh, or none) is fit by ridge regression of its
  pre-activation target `σ⁻¹(h*)` on its actual inputs x: `W = argmin mean‖Wx + b − σ⁻¹(h*)‖² +
  ridge·‖W‖²`. The layers are solved first to last, each on the outputs of the layers already
  refit. The data are read in batches and only `Σx̃x̃ᵀ` and `Σx̃ tᵀ` are kept (x̃ = [x, 1]), so
  memory is O(features²), not O(samples); solves are float64 (Cholesky, with a least-squares
  fallback when `ridge` is 0 and the inputs are rank-deficient).
- **Low-rank backward targets.** The targets come from the decision layer down: the scores'
  residual `Δs` (the squared-hinge one: `y − s` where the one-vs-rest margin `y·s < 1` is
  violated, else 0, with y = ±1) is mapped to the last hidden layer through the rank-`rank`
  pseudo-inverse of the decision layer (truncated SVD), `h* = h + Δs·pinv_r(W)ᵀ`: the smallest
  change of the hidden activity that fixes the scores. Through each layer below, `σ⁻¹(h*) − a`
  is mapped the same way. Targets are taken from the network as it stood at the start of the
  pass; `passes` such passes are run (a few suffice).
- **Decision layer: Stiefel projection + adaptive SVM.** `ClosedFormClassifier`: the ridge
  solution B of the ±1 one-vs-rest targets on the features is projected onto the Stiefel
  manifold (P = U_r, the orthonormal frame of B's column space, i.e. its polar factor UVᵀ up to
  a rotation; `stiefel_frame`), the features are projected, z = Pᵀh, and a linear one-vs-rest
  squared-hinge SVM is fit on z by its finite Newton / active-set iteration (Keerthi & DeCoste
  2005): each step is a ridge regression on the samples that violate their margin, until the
  active sets stop changing (or `svm.iterations`). The decision layer is the product:
  scores = Vᵀ Pᵀ h + c, one `Linear`.

Where this differs from (or fills gaps in) the paper's summary, by choice: the "adaptive" SVM is
the active-set reweighting above; the Stiefel frame has as many columns as B has rank (classes
− 1 for one-vs-rest targets); the first decision layer is fit on the initial (seeded random)
features before the first pass, so `passes: 0` is a random-feature network with a trained
decision layer; tanh targets are clamped to ±`TANH_LIMIT` before `atanh`. The network stays an
ordinary `nn.Module` of `Linear` layers, so every pruning method applies to it; a pruned network
is refit on its mask (each kept row solved on its support, pruned weights exactly zero).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from secateurs.core.config import StrictModel
from secateurs.core.errors import ConfigError
from secateurs.core.masks import MaskSet
from secateurs.core.registry import Registry

# tanh targets are clamped to ±TANH_LIMIT before atanh (atanh(0.999) ≈ 3.8): beyond it a target
# outside tanh's open range (−1, 1) would ask for an infinite pre-activation.
TANH_LIMIT = 0.999

Batches = Iterable[tuple[Tensor, Tensor]]


class SVMOptions(StrictModel):
    """The adaptive SVM of the decision layer."""

    ridge: float = Field(1e-3, gt=0, description="L2 penalty per sample of the SVM weights")
    iterations: int = Field(20, gt=0, description="most active-set (Newton) steps")


class SolvedTraining(StrictModel):
    """Base of a train `method` that solves the weights instead of running an optimizer.

    A subclass is registered in `TRAINERS` under its `method` name; a train stage with
    `method: NAME` is validated by it (its fields are the stage's options) and runs `fit`.
    """

    method: str
    batch_size: int = Field(512, gt=0, description="samples read at a time")

    def fit(
        self,
        model: nn.Module,
        batches: Iterable[tuple[Tensor, Tensor]],
        *,
        classes: int,
        masks: MaskSet | None = None,
        on_pass: Callable[[int], None] | None = None,
    ) -> nn.Module:
        """Train `model` in place on the re-iterable `batches`; `on_pass(p)` after each pass."""
        raise NotImplementedError


TRAINERS: Registry[type[SolvedTraining]] = Registry("train method")


@TRAINERS.register("closed_form", "MLP solved layer by layer: ridge + low-rank targets + Stiefel/SVM head")
class ClosedFormConfig(SolvedTraining):
    """`train: {method: closed_form, ...}`: the network solved layer by layer in closed form."""

    method: Literal["closed_form"] = "closed_form"
    ridge: float = Field(1e-3, ge=0, description="L2 penalty per sample of each hidden layer's weights")
    rank: int | None = Field(10, gt=0, description="rank of the backward pseudo-inverses (null: full)")
    passes: int = Field(3, ge=0, description="forward/backward passes over the hidden layers")
    batch_size: int = Field(512, gt=0, description="samples read at a time (sums only are kept)")
    svm: SVMOptions = Field(default_factory=SVMOptions)

    def fit(
        self,
        model: nn.Module,
        batches: Iterable[tuple[Tensor, Tensor]],
        *,
        classes: int,
        masks: MaskSet | None = None,
        on_pass: Callable[[int], None] | None = None,
    ) -> nn.Module:
        return fit_closed_form(model, batches, self, classes=classes, masks=masks, on_pass=on_pass)


# --------------------------------------------------------------------------- invertible activations
@dataclass(frozen=True)
class Activation:
    """An invertible activation: `forward` and its inverse on the forward's range."""

    kind: Literal["identity", "leaky_relu", "tanh"]
    slope: float = 1.0

    def forward(self, a: Tensor) -> Tensor:
        if self.kind == "tanh":
            return torch.tanh(a)
        if self.kind == "leaky_relu":
            return torch.where(a >= 0, a, a * self.slope)
        return a

    def inverse(self, h: Tensor) -> Tensor:
        """σ⁻¹(h); tanh's argument is clamped to ±TANH_LIMIT first."""
        if self.kind == "tanh":
            return torch.atanh(h.clamp(-TANH_LIMIT, TANH_LIMIT))
        if self.kind == "leaky_relu":
            return torch.where(h >= 0, h, h / self.slope)
        return h


def invertible(name: str, module: nn.Module) -> Activation:
    """The `Activation` of a module, or a ConfigError naming the layer and the fix."""
    if isinstance(module, nn.Tanh):
        return Activation("tanh")
    if isinstance(module, nn.LeakyReLU) and module.negative_slope > 0:
        return Activation("leaky_relu", float(module.negative_slope))
    if isinstance(module, nn.Identity | nn.Dropout):
        return Activation("identity")
    raise ConfigError(
        f"closed-form training inverts each activation, and layer {name!r} ({module!r}) is not invertible",
        where="train",
        fix="build the MLP with activation tanh (model: {name: mlp, options: {activation: tanh}}) "
        "or nn.LeakyReLU(negative_slope > 0)",
    )


# --------------------------------------------------------------------------- the chain of layers
@dataclass
class Chain:
    """An MLP as `flatten → (Linear → σ)* → Linear`, read from a model's leaf modules."""

    names: list[str]  # the Linear layers' module names, the decision layer last
    linears: list[nn.Linear]
    activations: list[Activation]  # one per hidden layer

    @classmethod
    def of(cls, model: nn.Module) -> Chain:
        names: list[str] = []
        linears: list[nn.Linear] = []
        activations: list[Activation] = []
        pending: Activation | None = None
        for name, module in model.named_modules():
            if any(True for _ in module.children()):
                continue
            if isinstance(module, nn.Linear):
                if linears:
                    activations.append(pending or Activation("identity"))
                names.append(name)
                linears.append(module)
                pending = None
            elif isinstance(module, nn.Flatten) and not linears:
                continue
            elif not linears:
                raise ConfigError(
                    f"closed-form training solves chains of Linear layers, and {name!r} "
                    f"({type(module).__name__}) comes before the first one",
                    where="train",
                    fix="use an MLP (model: mlp or lenet300), or a gradient optimizer for this model",
                )
            else:
                act = invertible(name, module)
                if act.kind == "identity":
                    continue
                if pending is not None:
                    raise ConfigError(
                        f"closed-form training takes one activation per layer; {name!r} is another",
                        where="train",
                        fix="use an MLP of Linear layers each followed by one tanh or leaky ReLU",
                    )
                pending = act
        if not linears or pending is not None:
            raise ConfigError(
                "closed-form training needs a model ending in a Linear decision layer",
                where="train",
                fix="use an MLP (model: mlp), whose classifier is its last Linear layer",
            )
        return cls(names, linears, activations)

    def check_forward(self, model: nn.Module, x: Tensor) -> None:
        """Refuse a model whose forward is not this chain (e.g. skip connections)."""
        with torch.no_grad():
            was = model.training
            model.eval()
            try:
                expected = model(x)
            finally:
                model.train(was)
            params = [(m.weight.detach(), _bias(m)) for m in self.linears]
            got = forward(params, self.activations, x.to(params[0][0].dtype))
        if got.shape != expected.shape or not torch.allclose(got, expected, atol=1e-4, rtol=1e-4):
            raise ConfigError(
                "closed-form training solves models whose forward is their Linear layers and activations "
                "in order, and this model's forward is something else",
                where="train",
                fix="use an MLP (model: mlp with activation tanh)",
            )


def _bias(linear: nn.Linear) -> Tensor:
    if linear.bias is None:
        raise ConfigError(
            "closed-form training fits a bias with every Linear layer, and this one has none",
            where="train",
            fix="build the Linear layers with bias=True (the mlp model does)",
        )
    return linear.bias.detach()


Params = list[tuple[Tensor, Tensor]]  # (weight [out, in], bias [out]) per Linear


def forward(params: Params, activations: list[Activation], x: Tensor, upto: int | None = None) -> Tensor:
    """Scores of the chain, or (with `upto`) the input of Linear number `upto`."""
    h = x.reshape(x.shape[0], -1)
    stop = len(params) if upto is None else upto
    for i in range(stop):
        weight, bias = params[i]
        h = torch.addmm(bias, h, weight.T)
        if i < len(activations):
            h = activations[i].forward(h)
    return h


# --------------------------------------------------------------------------- closed-form solves
def _augmented(x: Tensor) -> Tensor:
    return torch.cat([x, torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)], dim=1)


def ridge_solve(gram: Tensor, cross: Tensor, ridge: float, *, penalize_last: bool = False) -> Tensor:
    """argmin_B ‖X̃B − T‖² + ridge·‖B‖² from X̃ᵀX̃ [d, d] and X̃ᵀT [d, k], in float64; the last row
    (the bias of an augmented X̃) is not penalized unless `penalize_last`.

    Cholesky when the system is positive definite, else the minimum-norm least-squares solution.
    """
    gram, cross = gram.to(torch.float64), cross.to(torch.float64)
    penalty = torch.full((gram.shape[0],), float(ridge), dtype=torch.float64, device=gram.device)
    if not penalize_last:
        penalty[-1] = 0.0
    system = gram + torch.diag(penalty)
    factor, info = torch.linalg.cholesky_ex(system)
    if int(info) == 0:
        return torch.cholesky_solve(cross, factor)
    return torch.linalg.lstsq(system, cross, driver="gelsd" if system.device.type == "cpu" else None).solution


def masked_ridge_rows(gram: Tensor, cross: Tensor, mask: Tensor, ridge: float, bias: bool) -> Tensor:
    """Each output row solved on its kept support alone: [rows, d] weights, exactly 0 where pruned.

    `gram` is X̃ᵀX̃ and `cross` X̃ᵀT [d(+1), rows]; with `bias` the last column of X̃ is the ones
    column, always kept and unpenalized. Rows with the same support share one factorisation.
    """
    rows = mask.shape[0]
    d = gram.shape[0]
    out = torch.zeros(rows, d, dtype=torch.float64, device=gram.device)
    full = torch.ones(rows, d, dtype=torch.bool, device=gram.device)
    full[:, : mask.shape[1]] = mask
    groups: dict[bytes, list[int]] = {}
    for r in range(rows):
        groups.setdefault(full[r].cpu().numpy().tobytes(), []).append(r)
    for members in groups.values():
        keep = full[members[0]].nonzero().squeeze(1)
        if keep.numel() == 0:
            continue
        sub = ridge_solve(gram[keep][:, keep], cross[keep][:, members], ridge, penalize_last=not bias)
        index = torch.tensor(members, device=gram.device)
        out[index[:, None], keep[None, :]] = sub.T
    return out


def low_rank_pinv(weight: Tensor, rank: int | None) -> Tensor:
    """The rank-`rank` pseudo-inverse [in, out] of a [out, in] weight by truncated SVD (float64);
    singular values below the float64 tolerance are dropped as in `torch.linalg.pinv`."""
    u, s, vh = torch.linalg.svd(weight.to(torch.float64), full_matrices=False)
    keep = s > s.max() * max(weight.shape) * torch.finfo(torch.float64).eps if s.numel() else s > 0
    if rank is not None:
        keep[rank:] = False
    return vh[keep].T @ torch.diag(1.0 / s[keep]) @ u[:, keep].T


def signed_targets(y: Tensor, classes: int, dtype: torch.dtype = torch.float64) -> Tensor:
    """One-vs-rest targets: +1 for the sample's class, −1 elsewhere."""
    t = torch.full((y.shape[0], classes), -1.0, dtype=dtype, device=y.device)
    t[torch.arange(y.shape[0], device=y.device), y.long()] = 1.0
    return t


def hinge_residual(scores: Tensor, targets: Tensor) -> Tensor:
    """Squared-hinge residual: y − s where the margin y·s < 1 is violated, 0 where it holds."""
    return torch.where(targets * scores < 1, targets - scores, torch.zeros_like(scores))


# --------------------------------------------------------------------------- decision layer
def stiefel_frame(matrix: Tensor, tolerance: float = 1e-10) -> Tensor:
    """The Stiefel-manifold frame of a [d, k] matrix: the left singular vectors U_r of its r
    singular values above `tolerance`·largest, a [d, r] matrix with orthonormal columns.

    For a full-rank matrix U_r spans the columns of its polar factor UVᵀ (the orthonormal matrix
    nearest to it), which differs only by the rotation Vᵀ that the SVM after it is invariant to.
    The ridge solution of one-vs-rest targets is never full rank (the targets sum to the same
    constant for every sample, which the bias absorbs); there the polar factor is not unique, and
    the frame keeps only the directions the solution uses, so it does not follow rounding noise.
    """
    u, s, _ = torch.linalg.svd(matrix, full_matrices=False)
    if s.numel() == 0 or float(s[0]) == 0.0:
        return u[:, :0]
    return u[:, s > tolerance * s[0]]


def fit_decision(
    features: Callable[[], Iterable[tuple[Tensor, Tensor]]], classes: int, ridge: float, iterations: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Stiefel projection + adaptive one-vs-rest squared-hinge SVM on features.

    `features()` yields (h [n, d] float64, labels) batches, read again on every step (only sums
    are kept). Returns (weight [classes, d], bias [classes], projection P [d, k]).
    """
    gram = cross = None
    n = 0
    for h, y in features():
        ha = _augmented(h)
        g, c = ha.T @ ha, ha.T @ signed_targets(y, classes)
        gram, cross = (g, c) if gram is None else (gram + g, cross + c)  # type: ignore[operator]
        n += h.shape[0]
    if gram is None or cross is None:
        raise ConfigError("closed-form training got no samples", where="train", fix="give training data")
    solution = ridge_solve(gram, cross, ridge * n)
    projection = stiefel_frame(solution[:-1])  # [d, k]
    k = projection.shape[1]
    # the projection's Gram matrix follows from the features' one: [P 0; 0 1]ᵀ G [P 0; 0 1]
    lift = torch.zeros(gram.shape[0], k + 1, dtype=torch.float64, device=gram.device)
    lift[:-1, :k] = projection
    lift[-1, k] = 1.0
    svm = ridge_solve(lift.T @ gram @ lift, lift.T @ cross, ridge * n)  # [k+1, C]: all samples active
    for _ in range(iterations):
        grams = torch.zeros(classes, k + 1, k + 1, dtype=torch.float64, device=gram.device)
        crosses = torch.zeros(classes, k + 1, dtype=torch.float64, device=gram.device)
        for h, y in features():
            z = _augmented(h @ projection)
            t = signed_targets(y, classes)
            active = (t * (z @ svm) < 1).to(torch.float64)  # [n, C]
            grams += torch.einsum("nc,ni,nj->cij", active, z, z)
            crosses += torch.einsum("nc,nc,ni->ci", active, t, z)
        penalty = torch.full((k + 1,), ridge * n, dtype=torch.float64, device=gram.device)
        penalty[-1] = 0.0
        systems = grams + torch.diag(penalty)
        factor, info = torch.linalg.cholesky_ex(systems)
        if bool((info == 0).all()):
            step = torch.cholesky_solve(crosses.unsqueeze(-1), factor).squeeze(-1).T
        else:
            step = torch.linalg.lstsq(systems, crosses.unsqueeze(-1)).solution.squeeze(-1).T
        converged = torch.equal(step, svm)  # the same active sets give the very same solve
        svm = step
        if converged:
            break
    weight = (projection @ svm[:-1]).T
    return weight, svm[-1], projection


class ClosedFormClassifier:
    """The decision layer on its own: `fit(X, y)` then `predict(X)` / `decision_function(X)`.

    Stiefel projection of the ridge solution + adaptive one-vs-rest squared-hinge SVM, all in
    closed form (see the module docstring); `weight`, `bias` and `projection` after fitting.
    `as_linear()` gives the fitted `nn.Linear`.
    """

    def __init__(self, ridge: float = 1e-3, iterations: int = 20, batch_size: int = 4096) -> None:
        SVMOptions(ridge=ridge, iterations=iterations)  # validated like the recipe's `svm` block
        self.ridge, self.iterations, self.batch_size = ridge, iterations, batch_size
        self.weight: Tensor | None = None
        self.bias: Tensor | None = None
        self.projection: Tensor | None = None

    def fit(self, x: Tensor, y: Tensor) -> ClosedFormClassifier:
        x = x.reshape(x.shape[0], -1).to(torch.float64)
        classes = int(y.max()) + 1

        def batches() -> Iterable[tuple[Tensor, Tensor]]:
            return zip(x.split(self.batch_size), y.split(self.batch_size), strict=True)

        self.weight, self.bias, self.projection = fit_decision(batches, classes, self.ridge, self.iterations)
        return self

    def decision_function(self, x: Tensor) -> Tensor:
        if self.weight is None or self.bias is None:
            raise ConfigError("the classifier is not fitted", fix="call fit(X, y) first")
        return torch.addmm(self.bias, x.reshape(x.shape[0], -1).to(torch.float64), self.weight.T)

    def predict(self, x: Tensor) -> Tensor:
        return self.decision_function(x).argmax(1)

    def as_linear(self) -> nn.Linear:
        if self.weight is None or self.bias is None:
            raise ConfigError("the classifier is not fitted", fix="call fit(X, y) first")
        layer = nn.Linear(self.weight.shape[1], self.weight.shape[0])
        with torch.no_grad():
            layer.weight.copy_(self.weight)
            layer.bias.copy_(self.bias)
        return layer


# --------------------------------------------------------------------------- the trainer
def _layer_targets(
    old: Params, pinvs: list[Tensor], acts: list[Activation], x: Tensor, y: Tensor, layer: int, classes: int
) -> Tensor:
    """The pre-activation target of hidden Linear `layer`, from the scores' hinge residual down."""
    hs, pre = [x.reshape(x.shape[0], -1)], []
    for i, (weight, bias) in enumerate(old):
        pre.append(torch.addmm(bias, hs[-1], weight.T))
        if i < len(acts):
            hs.append(acts[i].forward(pre[-1]))
    delta = hinge_residual(pre[-1], signed_targets(y, classes))
    for i in range(len(old) - 1, layer, -1):  # from the decision layer down to `layer` + 1
        target = acts[i - 1].inverse(hs[i] + delta @ pinvs[i].T)
        if i - 1 == layer:
            return target
        delta = target - pre[i - 1]
    raise AssertionError("the decision layer has no pre-activation target")


def fit_closed_form(
    model: nn.Module,
    batches: Iterable[tuple[Tensor, Tensor]],
    config: ClosedFormConfig | None = None,
    *,
    classes: int,
    masks: MaskSet | None = None,
    on_pass: Callable[[int], None] | None = None,
) -> nn.Module:
    """Train an MLP with invertible activations in closed form, in place (see the module docstring).

    `batches` must be iterable more than once (a list or a loader; order does not matter, every
    solve reads sums). Masked weights (`masks`, by parameter name) are solved on their kept
    support and stay exactly zero. `on_pass(p)` is called after the decision layer is fit on
    the initial features (p = 0) and after each pass, the model holding that pass's weights.
    Deterministic: nothing is sampled; the start is the model's own (seeded) initial weights.
    """
    config = config or ClosedFormConfig()
    chain = Chain.of(model)
    device = chain.linears[0].weight.device
    first = next(iter(batches), None)
    if first is None:
        raise ConfigError("closed-form training got no samples", where="train", fix="give training data")
    chain.check_forward(model, first[0].to(device))
    masks = masks or MaskSet({})
    keep = [masks.get(f"{name}.weight" if name else "weight") for name in chain.names]
    params: Params = [
        (m.weight.detach().to(torch.float64), _bias(m).to(torch.float64)) for m in chain.linears
    ]
    acts = chain.activations

    def data() -> Iterable[tuple[Tensor, Tensor]]:
        return ((x.to(device, torch.float64), y.to(device)) for x, y in batches)

    def write(current: Params) -> None:
        with torch.no_grad():
            for module, (weight, bias) in zip(chain.linears, current, strict=True):
                module.weight.copy_(weight)
                module.bias.copy_(bias)

    def decision(current: Params) -> tuple[Tensor, Tensor]:
        last = len(current) - 1
        weight, bias, _ = fit_decision(
            lambda: ((forward(current, acts, x, upto=last), y) for x, y in data()),
            classes,
            config.svm.ridge,
            config.svm.iterations,
        )
        if keep[last] is not None:  # refit the pruned decision layer's kept weights on its scores
            weight, bias = _masked_refit_on(current, last, weight, bias, keep[last], data, acts, config.ridge)
        return weight, bias

    params[-1] = decision(params)
    write(params)
    if on_pass is not None:
        on_pass(0)
    for p in range(config.passes):
        old = list(params)
        pinvs = [low_rank_pinv(w, config.rank) for w, _ in old]
        for layer in range(len(old) - 1):
            gram = cross = None
            n = 0
            for x, y in data():
                inputs = _augmented(forward(params, acts, x, upto=layer))
                target = _layer_targets(old, pinvs, acts, x, y, layer, classes)
                g, c = inputs.T @ inputs, inputs.T @ target
                gram, cross = (g, c) if gram is None else (gram + g, cross + c)  # type: ignore[operator]
                n += x.shape[0]
            assert gram is not None and cross is not None
            if keep[layer] is None:
                solution = ridge_solve(gram, cross, config.ridge * n).T
            else:
                solution = masked_ridge_rows(gram, cross, keep[layer], config.ridge * n, bias=True)
            params[layer] = (solution[:, :-1].contiguous(), solution[:, -1].contiguous())
        params[-1] = decision(params)
        write(params)
        if on_pass is not None:
            on_pass(p + 1)
    return model


def _masked_refit_on(
    params: Params,
    layer: int,
    weight: Tensor,
    bias: Tensor,
    mask: Tensor,
    data: Callable[[], Iterable[tuple[Tensor, Tensor]]],
    acts: list[Activation],
    ridge: float,
) -> tuple[Tensor, Tensor]:
    """The kept weights of a pruned layer fit, by ridge regression on their support, to the outputs
    the dense `weight`/`bias` give on the layer's inputs."""
    gram = None
    n = 0
    for x, _ in data():
        inputs = _augmented(forward(params, acts, x, upto=layer))
        gram = inputs.T @ inputs if gram is None else gram + inputs.T @ inputs
        n += x.shape[0]
    assert gram is not None
    dense = torch.cat([weight, bias[:, None]], dim=1)  # [out, d+1]
    solution = masked_ridge_rows(gram, gram @ dense.T, mask, ridge * n, bias=True)
    return solution[:, :-1].contiguous(), solution[:, -1].contiguous()


# --------------------------------------------------------------------------- refit on a mask
def reconstruction_error(weight: Tensor, new: Tensor, hessian: Tensor) -> Tensor:
    """Per row, (w − ŵ)ᵀ H (w − ŵ): the squared output error of ŵ against w on the inputs of H."""
    diff = (weight - new).to(torch.float64)
    return ((diff @ hessian.to(torch.float64)) * diff).sum(1)


def refit_on_mask(weight: Tensor, hessian: Tensor, mask: Tensor, ridge: float = 1e-8) -> Tensor:
    """The kept weights of each row refit by ridge regression onto the dense layer's outputs.

    `hessian` ∝ Σxxᵀ of the layer's inputs; the targets are the dense outputs Wx, whose cross
    statistics are Σx(Wx)ᵀ = (Σxxᵀ)Wᵀ, so no extra pass is needed. `ridge` is relative to the
    mean diagonal of H (scale-free, like OBS's percdamp). A row whose refit would not lower its
    error ‖(w − ŵ)X‖² below the masked weights' (possible only through the ridge term) keeps its
    masked weights: the result never does worse than masking. Pruned entries are exactly 0.
    """
    if not math.isfinite(ridge) or ridge < 0:
        raise ConfigError(
            f"ridge must be a non-negative number, got {ridge!r}", where="reconstruct", fix="e.g. ridge: 1e-8"
        )
    H = hessian.to(torch.float64)
    W = weight.detach().to(torch.float64)
    mask = mask.to(torch.bool)
    damp = ridge * float(torch.diag(H).mean()) if H.numel() else 0.0
    dead = torch.diag(H) == 0
    solution = masked_ridge_rows(H, H @ W.T, mask, damp, bias=False) if not bool(dead.all()) else W * mask
    masked = W * mask
    worse = reconstruction_error(W, solution, H) > reconstruction_error(W, masked, H)
    solution[worse] = masked[worse]
    solution = solution * mask  # exact zeros (a -0.0 or a dead input's value never survives)
    return solution.to(weight.dtype)
