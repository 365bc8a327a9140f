"""Python argument checks: the same messages as csrc/checks.h, so that every
backend, the reference included, rejects bad input the same way. The op
modules call them in the order of the per-op checks in csrc/op_checks.h."""
from __future__ import annotations

import math
import numbers

import torch

FLOAT_DTYPES = (torch.float32, torch.float64, torch.bfloat16, torch.float16)


def shape_str(shape) -> str:
    return "[" + ", ".join(str(int(s)) for s in shape) + "]"


def check_rank(t: torch.Tensor, name: str, rank: int, layout: str) -> None:
    if t.dim() != rank:
        raise ValueError(f"{name}: expected a {rank}-d tensor {layout}, got shape {shape_str(t.shape)}")


def check_shape(t: torch.Tensor, name: str, expected) -> None:
    if tuple(t.shape) != tuple(expected):
        raise ValueError(f"{name}: expected shape {shape_str(expected)}, got {shape_str(t.shape)}")


def check_float(t: torch.Tensor, name: str) -> None:
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(
            f"{name}: expected a floating dtype (float32, float64, bfloat16, float16), got {t.dtype}"
        )


def check_same_device(t: torch.Tensor, name: str, ref: torch.Tensor, ref_name: str) -> None:
    if t.device != ref.device:
        raise ValueError(f"{name}: expected device {ref.device} (the device of {ref_name}), got {t.device}")


def check_dtype(t: torch.Tensor, name: str, expected: torch.dtype, why: str = "") -> None:
    """`why`, if given, follows the expected dtype in parentheses."""
    if t.dtype != expected:
        raise TypeError(f"{name}: expected dtype {expected}{f' ({why})' if why else ''}, got {t.dtype}")


def check_like(t: torch.Tensor | None, name: str, ref: torch.Tensor, ref_name: str, expected) -> None:
    """An optional tensor must share `ref`'s device and dtype and have `expected` shape."""
    if t is None:
        return
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{name}: expected a tensor or None, got {type(t).__name__}")
    check_same_device(t, name, ref, ref_name)
    check_dtype(t, name, ref.dtype, f"the dtype of {ref_name}")
    check_shape(t, name, expected)


def describe(v) -> str:
    """What a wrong argument was, for a message: its type, and its value when short."""
    if v is None:
        return "None"
    if isinstance(v, torch.Tensor):
        return type(v).__name__
    text = repr(v)
    return f"{type(v).__name__} {text}" if len(text) <= 40 else type(v).__name__


def is_int(v) -> bool:
    """An integer: a Python or NumPy int, not a bool (an int to Python, but never meant as a count)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def is_real(v) -> bool:
    """A real number: a Python or NumPy int or float, not a bool (an int to
    Python, but never meant as a number) and not a tensor (whose value a GPU
    would have to be waited on to read)."""
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def check_finite(v, name: str, expected: str = "a finite float") -> None:
    """A real number, not NaN or infinite; `expected` phrases it in both messages."""
    if not is_real(v):
        raise TypeError(f"{name}: expected {expected}, got {describe(v)}")
    # While dynamo traces, a float argument may be symbolic (after a
    # recompile for another value it stops specializing floats), and reading
    # its value would break the graph. Eager calls check it here; compiled
    # calls of the C++ ops still check eps and scale (csrc/op_checks.h).
    if not torch.compiler.is_compiling() and not math.isfinite(v):
        raise ValueError(f"{name}: expected {expected}, got {float(v):g}")

