"""Which numeric precision a worker trains in, and the autocast/GradScaler pair for it."""

from __future__ import annotations

import contextlib
import functools
import warnings
from typing import Literal

import torch

Precision = Literal["fp32", "fp16", "bf16"]


class PrecisionError(ValueError):
    """A precision that this device cannot train in."""


def resolve_precision(requested: str, device: torch.device, *, cell: str = "lstm") -> Precision:
    """`auto` -> fp16 on CUDA, fp32 elsewhere; refuse fp16 on CPU (no fast fp16 kernels, no GradScaler need), and
    bf16 on a CPU whose kernels for the recurrent `cell` have no bf16 form."""
    if requested == "auto":
        return "fp16" if device.type == "cuda" else "fp32"
    if requested == "fp16" and device.type != "cuda":
        raise PrecisionError(
            "train.precision=fp16 needs a CUDA GPU (autocast fp16 + GradScaler); this worker runs on "
            f"{device.type}. Use train.precision=bf16 or fp32 on CPU, or train.precision=auto."
        )
    if requested == "bf16" and device.type == "cuda" and not torch.cuda.is_bf16_supported():
        raise PrecisionError("train.precision=bf16: this GPU has no bf16 support; use fp16 or fp32")
    if requested == "bf16" and device.type == "cpu" and not cpu_bf16_works(cell):
        raise PrecisionError(
            f"train.precision=bf16: this CPU has no bf16 kernel for the {cell.upper()} cell (oneDNN's needs "
            "AVX-512 BF16 or AMX; this one has neither); use train.precision=fp32 (or auto) here"
        )
    return requested  # type: ignore[return-value]


@functools.cache
def cpu_bf16_works(cell: str = "lstm") -> bool:
    """Whether a one-step `cell` (lstm/gru/rnn) runs under bf16 autocast on this CPU: oneDNN's bf16 LSTM needs
    AVX-512 BF16 or AMX, and raises on an AVX2-only CPU ("could not create a primitive descriptor")."""
    module = {"lstm": torch.nn.LSTM, "gru": torch.nn.GRU}.get(cell, torch.nn.RNN)(2, 2, batch_first=True)
    try:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            module(torch.zeros(1, 2, 2))
    except RuntimeError:
        return False
    return True


def autocast(precision: Precision, device: torch.device) -> contextlib.AbstractContextManager:
    """The forward-pass context: autocast for fp16/bf16, nothing for fp32."""
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.float16 if precision == "fp16" else torch.bfloat16
    return torch.autocast(device_type=device.type, dtype=dtype)


def grad_scaler(precision: Precision) -> torch.amp.GradScaler:
    """A GradScaler that is live only for fp16; disabled it is a no-op, so every path runs the same code."""
    with warnings.catch_warnings():
        # On a CPU-only build the scaler warns that CUDA is missing even when disabled.
        warnings.simplefilter("ignore")
        return torch.amp.GradScaler("cuda", enabled=precision == "fp16")
