"""Specification of the expected calibration error on hand-computed cases."""

from __future__ import annotations

import pytest
import torch

from secateurs import ConfigError
from secateurs.eval.calibration import expected_calibration_error


def logits_of(probs: list[list[float]]) -> torch.Tensor:
    """Logits whose softmax is exactly `probs` (log-probabilities)."""
    return torch.tensor(probs, dtype=torch.float64).log()


def test_hand_computed_ece_over_five_bins() -> None:
    # confidences 0.95 (right), 0.85 (wrong) -> bin (0.8, 1]: acc 0.5, conf 0.9, weight 2/4
    #             0.65 (right)               -> bin (0.6, 0.8]: |1 - 0.65| = 0.35, weight 1/4
    #             0.55 (right)               -> bin (0.4, 0.6]: |1 - 0.55| = 0.45, weight 1/4
    logits = logits_of([[0.95, 0.05], [0.85, 0.15], [0.35, 0.65], [0.55, 0.45]])
    labels = torch.tensor([0, 1, 1, 0])
    expected = 2 / 4 * 0.4 + 1 / 4 * 0.35 + 1 / 4 * 0.45
    assert expected_calibration_error(logits, labels, bins=5) == pytest.approx(expected, abs=1e-12)
    # one bin: |mean accuracy − mean confidence| = |0.75 − 0.75| = 0
    assert expected_calibration_error(logits, labels, bins=1) == pytest.approx(0.0, abs=1e-12)


def test_perfect_calibration_gives_zero() -> None:
    logits = logits_of([[0.75, 0.25]] * 4)
    labels = torch.tensor([0, 0, 0, 1])  # 3 of 4 right at confidence 0.75
    assert expected_calibration_error(logits, labels) == pytest.approx(0.0, abs=1e-12)


def test_default_is_fifteen_bins() -> None:
    # 0.62 and 0.68 share a bin of width 0.1 but not of width 1/15 ((0.6, 0.667] and (0.667, 0.733])
    logits = logits_of([[0.62, 0.38], [0.68, 0.32]])
    labels = torch.tensor([0, 1])
    assert expected_calibration_error(logits, labels) == pytest.approx((0.38 + 0.68) / 2, abs=1e-12)
    assert expected_calibration_error(logits, labels, bins=15) == expected_calibration_error(logits, labels)
    assert expected_calibration_error(logits, labels, bins=10) == pytest.approx(0.15, abs=1e-12)


def test_always_wrong_and_certain_is_the_worst_case() -> None:
    logits = torch.tensor([[50.0, 0.0, 0.0], [0.0, 50.0, 0.0]])
    assert expected_calibration_error(logits, torch.tensor([2, 2])) == pytest.approx(1.0, abs=1e-12)


def test_invalid_inputs_are_errors() -> None:
    logits, labels = torch.zeros(3, 2), torch.zeros(3, dtype=torch.int64)
    with pytest.raises(ConfigError, match=r"bins=0 must be a positive integer"):
        expected_calibration_error(logits, labels, bins=0)
    with pytest.raises(ConfigError, match=r"logits of shape \(3, 2\) and labels of shape \(2,\)"):
        expected_calibration_error(logits, labels[:2])
    with pytest.raises(ConfigError, match="no samples"):
        expected_calibration_error(torch.zeros(0, 2), labels[:0])
