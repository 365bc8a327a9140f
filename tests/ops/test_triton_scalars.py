"""The scalar arguments of the Triton attention kernels.

A Python float reaches a Triton kernel as a float32 scalar, but code generated
by inductor passes float64 scalars: the kernels must compile with both (float64
arithmetic against a float32 accumulator once broke `tl.dot(..., acc)` under
torch.compile on a GPU). Compiling for sm_90 needs Triton's bundled ptxas, not
a GPU, so this runs everywhere. And float64 attention must not see a float32
scale: the launcher splits it into two float32 parts (_split_scale).
(Skipped under TRITON_INTERPRET=1, where no kernel is compiled.)
"""
import importlib.util
import os

import pytest

if importlib.util.find_spec("triton") is None or os.environ.get("TRITON_INTERPRET") == "1":
    pytest.skip("needs triton, not in interpreter mode", allow_module_level=True)

import triton
from mcvd.kernels import attention
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource

CONSTEXPRS = {"DP": 16, "EVEN_D": False, "F64": False, "PREC": "ieee", "BLOCK_M": 32, "BLOCK_N": 32,
              "EVEN_N": False}


@pytest.mark.parametrize("scale_type", ["fp32", "fp64"])
@pytest.mark.parametrize("kernel", ["_fwd_kernel", "_bwd_dkdv_kernel", "_bwd_dq_kernel"])
def test_attention_kernel_compiles_for_sm90(kernel, scale_type):
    fn = getattr(attention, kernel)
    while not isinstance(fn, triton.runtime.JITFunction):  # under the autotuner and heuristics
        fn = fn.fn
    names = fn.arg_names
    signature = {}
    for name in names:
        if name in CONSTEXPRS:
            signature[name] = "constexpr"
        elif name.startswith("scale"):
            signature[name] = scale_type
        elif name in ("H", "N", "D") or name.islower():
            signature[name] = "i32"
        else:
            signature[name] = "*fp32"
    constexprs = {(names.index(k),): v for k, v in CONSTEXPRS.items()}
    compiled = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs),
                              target=GPUTarget("cuda", 90, 32), options={"num_warps": 4, "num_stages": 2})
    assert ".entry" in compiled.asm["ptx"]


@pytest.mark.parametrize("scale", [0.125, 64 ** -0.5, 59 ** -0.5, 0.7, -0.3, 1e-30, 3e37])
def test_split_scale_is_float32_parts_summing_to_the_float64_scale(scale):
    import struct

    hi, lo = attention._split_scale(scale)
    for part in (hi, lo):  # each part survives the trip through float32
        assert struct.unpack("f", struct.pack("f", part))[0] == part
    assert abs((hi + lo) - scale) <= 2.0 ** -47 * abs(scale)
    if hi != scale:  # then float32 alone would have been off by more than the split
        assert abs(hi - scale) > abs((hi + lo) - scale)
