"""Build of mcvd._C: the C++ CPU kernels always, the CUDA kernels when the
installed torch has CUDA (MCVD_CUDA=0 skips them, MCVD_CUDA=1 demands them).

torch must already be installed; build with `pip install --no-build-isolation`
so that no isolated build environment downloads another torch.
"""
import glob
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension
from torch.utils import cpp_extension

VERSION = "0.1.0"
HERE = os.path.dirname(os.path.abspath(__file__))


def want_cuda() -> bool:
    flag = os.environ.get("MCVD_CUDA")
    has_cuda = cpp_extension.CUDA_HOME is not None and _torch_has_cuda()
    if flag == "0":
        return False
    if flag == "1":
        if not has_cuda:
            raise RuntimeError("MCVD_CUDA=1, but the installed torch has no CUDA or CUDA_HOME is unset")
        return True
    return has_cuda


def _torch_has_cuda() -> bool:
    import torch

    return torch.version.cuda is not None


def cpu_capability_flags() -> list[str]:
    """ATen's at::vec::Vectorized picks its AVX2/AVX-512 specialisation from
    CPU_CAPABILITY_* macros (ATen sets them per kernel file); without them it
    is a plain array. Set the widest one this machine runs."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = set(next(line for line in f if line.startswith("flags")).split())
    except (OSError, StopIteration):
        return []
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq"} <= flags:
        return ["-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"]
    if {"avx2", "fma"} <= flags:
        return ["-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"]
    return []


def extension():
    rel = lambda paths: sorted(os.path.relpath(p, HERE) for p in paths)  # noqa: E731
    sources = rel(glob.glob(os.path.join(HERE, "csrc", "*.cpp"))
                  + glob.glob(os.path.join(HERE, "csrc", "cpu", "*.cpp")))
    # -g0: Python's own CFLAGS ask for debug info, which more than doubles the time to compile ATen's
    # templates (and the library's size, 23 MB to 1.3 MB for one file) and helps no user.
    cxx = ["-O3", "-g0", "-std=c++17", "-fopenmp", f'-DMCVD_VERSION="{VERSION}"']
    # ATen's vectorised types pick their width from these macros; build for
    # the machine it runs on unless MCVD_PORTABLE=1 asks for a generic binary.
    if os.environ.get("MCVD_PORTABLE") != "1":
        cxx += ["-march=native", *cpu_capability_flags()]
    include = [os.path.join(HERE, "csrc")]
    if not want_cuda():
        return CppExtension("mcvd._C", sources, include_dirs=include, extra_compile_args={"cxx": cxx},
                            extra_link_args=["-fopenmp"])
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0")
    archs = os.environ["TORCH_CUDA_ARCH_LIST"]
    sources += rel(glob.glob(os.path.join(HERE, "csrc", "cuda", "*.cu")))
    defines = ["-DMCVD_WITH_CUDA", f'-DMCVD_CUDA_ARCHS="{archs}"']
    nvcc = ["-O3", "-std=c++17", "--use_fast_math", "-lineinfo", f'-DMCVD_VERSION="{VERSION}"', *defines]
    return CUDAExtension(
        "mcvd._C",
        sources,
        include_dirs=include,
        extra_compile_args={"cxx": cxx + defines, "nvcc": nvcc},
        extra_link_args=["-fopenmp"],
    )


setup(
    version=VERSION,
    ext_modules=[extension()],
    cmdclass={"build_ext": BuildExtension.with_options(use_ninja=True)},
)
