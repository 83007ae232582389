"""Export a (pruned) model for deployment: `torch.export` always, ONNX when `onnx` is installed.

A model shrunk by `secateurs.structured` is a plain module, so both exporters see an ordinary
smaller network. Files are written atomically.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch
from torch import Tensor, nn

from secateurs.core.errors import ConfigError
from secateurs.core.fileio import atomic_write_bytes


def export_program(model: nn.Module, example_input: Tensor, path: str | os.PathLike[str]) -> Path:
    """`torch.export` the model in eval mode and save the program (`torch.export.load` reads it)."""
    was_training = model.training
    model.eval()
    try:
        program = torch.export.export(model, (example_input,))
    finally:
        model.train(was_training)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def export_onnx(model: nn.Module, example_input: Tensor, path: str | os.PathLike[str]) -> Path:
    """Write the model as ONNX (opset chosen by torch), with a dynamic batch dimension."""
    try:
        import onnx  # noqa: F401  (torch's exporter needs it)
    except ImportError:
        raise ConfigError(
            "ONNX export needs the onnx package, which is not installed",
            fix='pip install -e ".[export]"',
        ) from None
    was_training = model.training
    model.eval()
    buffer = io.BytesIO()
    try:
        torch.onnx.export(
            model,
            (example_input,),
            buffer,
            dynamo=False,  # the TorchScript exporter needs only `onnx`; the dynamo one needs onnxscript too
            input_names=["input"],
            output_names=["output"],
            dynamic_axes={"input": {0: "batch"}, "output": {0: "batch"}},
        )
    finally:
        model.train(was_training)
    return atomic_write_bytes(path, buffer.getvalue())
