"""Build flashcore: the Python package, plus the flashcore._C kernel extension when a GPU toolchain is present.

    pip install --no-build-isolation .        # users
    pip install --no-build-isolation -e .     # developers: flashcore/_C*.so lands in the source tree

The vendor follows the installed torch:
    torch.version.cuda and nvcc found  -> CUDA: csrc/*.cpp + csrc/cuda/*.cu for sm_90a (+ FLASHCORE_CUDA_ARCHS)
    torch.version.hip                  -> HIP:  csrc/*.cpp + csrc/hip/*.hip for PYTORCH_ROCM_ARCH (default gfx942)
    neither, or torch not importable   -> the pure-Python package only (says so on one line)
(--no-build-isolation lets the build see your torch; an isolated build has none, so it installs pure Python.)

Environment:
    CUDA_HOME              CUDA toolkit root. Unset: torch's guess from `which nvcc`, else /usr/local/cuda, taking the
                           first one that has both bin/nvcc and include/cuda_runtime.h.
    FLASHCORE_CUDA_ARCHS   CUDA targets built in addition to sm_90a, separated by ';', ',' or spaces; each written
                           "100a", "sm_100a" or "10.0a". Example: FLASHCORE_CUDA_ARCHS="90a;100a". Each becomes
                           -gencode=arch=compute_X,code=sm_X (SASS only, no PTX).
    PYTORCH_ROCM_ARCH      HIP targets, ';'-separated (torch's variable). Default gfx942.
    FLASHCORE_FORCE_BUILD  1: fail loudly instead of installing without the extension.
    MAX_JOBS               parallel compile jobs (read by torch's BuildExtension).
"""

import glob
import os
import re
import shutil
import sys
import time

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

ROOT = os.path.dirname(os.path.abspath(__file__))
FORCE_BUILD = os.environ.get("FLASHCORE_FORCE_BUILD", "0") == "1"
DEFAULT_CUDA_ARCH = "90a"  # wgmma, TMA multicast and setmaxnreg need the arch-specific "a" target
DEFAULT_ROCM_ARCH = "gfx942"  # MI300X

# torch's headers need C++20 (torch/all.h stops below it) and BuildExtension adds -std=c++20 by default; say it here
# so host and device passes agree.
CXX_STD = "-std=c++20"


def say(message: str) -> None:
    print(f"flashcore setup: {message}", file=sys.stderr, flush=True)


def no_extension(reason: str) -> list:
    if FORCE_BUILD:
        raise SystemExit(f"flashcore setup: FLASHCORE_FORCE_BUILD=1 but cannot build the extension: {reason}")
    say(f"installing the pure-Python package WITHOUT the kernel extension flashcore._C ({reason})")
    return []


def find_cuda_home() -> "str | None":
    """CUDA_HOME as torch would pick it, but skipping candidates without headers (e.g. an nvcc wrapper script in
    /usr/local/bin makes torch guess /usr/local). A CUDA_HOME / CUDA_PATH that is set is the only candidate."""
    candidates = [os.environ[var] for var in ("CUDA_HOME", "CUDA_PATH") if os.environ.get(var)][:1]
    if not candidates:
        nvcc = shutil.which("nvcc")
        if nvcc:
            candidates.append(os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
        candidates.append("/usr/local/cuda")
    for home in candidates:
        if os.path.exists(os.path.join(home, "bin", "nvcc")) and os.path.exists(
            os.path.join(home, "include", "cuda_runtime.h")
        ):
            return home
    return None


def cuda_archs() -> list:
    """['90a', ...]: sm_90a first, then FLASHCORE_CUDA_ARCHS, without repeats."""
    archs = [DEFAULT_CUDA_ARCH]
    for token in re.split(r"[;,\s]+", os.environ.get("FLASHCORE_CUDA_ARCHS", "").strip()):
        if not token:
            continue
        arch = token.lower().removeprefix("sm_").removeprefix("compute_").replace(".", "")
        if not re.fullmatch(r"\d{2,3}[af]?", arch):
            raise SystemExit(f"flashcore setup: FLASHCORE_CUDA_ARCHS entry {token!r} is not a CUDA arch such as "
                             f"90a, sm_100a or 10.0a")
        if arch not in archs:
            archs.append(arch)
    return archs


def rocm_archs() -> list:
    archs = [a.strip() for a in os.environ.get("PYTORCH_ROCM_ARCH", DEFAULT_ROCM_ARCH).split(";") if a.strip()]
    for arch in archs:
        if not re.fullmatch(r"gfx[0-9a-f]+(:[a-z]+[+-])*", arch):
            raise SystemExit(f"flashcore setup: PYTORCH_ROCM_ARCH entry {arch!r} is not an arch such as gfx942")
    return archs


def sources(*patterns: str) -> list:
    found = []
    for pattern in patterns:
        found += sorted(os.path.relpath(p, ROOT) for p in glob.glob(os.path.join(ROOT, pattern)))
    return found


def extensions_and_cmdclass():
    try:
        import torch
    except ImportError as exc:
        return no_extension(f"torch is not importable here: {exc}; build with --no-build-isolation"), {}

    if torch.version.hip:
        vendor = "hip"
    elif torch.version.cuda:
        cuda_home = find_cuda_home()
        if cuda_home is None:
            where = os.environ.get("CUDA_HOME") or os.environ.get("CUDA_PATH") or "PATH or /usr/local/cuda"
            return no_extension(f"torch is built for CUDA {torch.version.cuda} but no nvcc with CUDA headers was "
                                f"found in {where}; set CUDA_HOME to a CUDA toolkit"), {}
        os.environ["CUDA_HOME"] = cuda_home  # read by torch.utils.cpp_extension when it is imported below
        vendor = "cuda"
    else:
        return no_extension(f"torch {torch.__version__} is a CPU build (neither torch.version.cuda nor .hip)"), {}

    from torch.utils.cpp_extension import BuildExtension, CUDAExtension

    if vendor == "cuda":
        archs = cuda_archs()
        arch_names = [f"sm_{a}" for a in archs]
        defines = ["-DFLASHCORE_CUDA=1"]
        device_flags = ["-O3", CXX_STD, "--use_fast_math",
                        "-lineinfo"]  # source lines for ncu / compute-sanitizer; no effect on the generated code
        device_flags += [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
        device_sources = sources("csrc/cuda/*.cu")
        say(f"building the CUDA extension for {', '.join(arch_names)} with {cuda_home}/bin/nvcc")
    else:
        arch_names = rocm_archs()
        defines = ["-DFLASHCORE_HIP=1"]
        device_flags = ["-O3", CXX_STD] + [f"--offload-arch={a}" for a in arch_names]
        device_sources = sources("csrc/hip/*.hip")
        say(f"building the HIP extension for {', '.join(arch_names)} (ROCm {torch.version.hip})")

    # FLASHCORE_ARCHS: only the host compiler sees it (csrc/build_info.cpp); nvcc would split it at the commas.
    host_flags = ["-O3", CXX_STD, f"-DFLASHCORE_ARCHS={','.join(arch_names)}"] + defines
    ext = CUDAExtension(
        name="flashcore._C",
        sources=sources("csrc/*.cpp") + device_sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": host_flags, "nvcc": device_flags + defines},
    )

    class Build(BuildExtension):
        def finalize_options(self):
            super().finalize_options()
            # Editable installs build in a fresh temporary directory every time; a fixed one under build/ lets
            # ninja reuse the objects of an unchanged source, so a repeated install takes seconds.
            if not os.path.abspath(self.build_temp).startswith(ROOT + os.sep):
                torch_tag = torch.__version__.replace("+", "_")
                self.build_temp = os.path.join(ROOT, "build", f"temp-py{sys.version_info[0]}{sys.version_info[1]}"
                                                              f"-torch{torch_tag}")

        def run(self):
            start = time.monotonic()
            super().run()
            jobs = os.environ.get("MAX_JOBS", "all cores")
            say(f"built flashcore._C ({vendor}: {', '.join(arch_names)}) in {time.monotonic() - start:.0f} s "
                f"(MAX_JOBS={jobs})")

    return [ext], {"build_ext": Build.with_options(use_ninja=True)}


class BuildPyWithTiles(build_py):
    """Also copy the kernels' tile tables (csrc/tiles/*.h) into the package as flashcore/tiles/: the shape advisor
    (flashcore/advise.py) reads them at run time, and an installed package has no csrc/."""

    def run(self):
        super().run()
        if self.dry_run:
            return
        target = os.path.join(self.build_lib, "flashcore", "tiles")
        os.makedirs(target, exist_ok=True)
        for header in sources("csrc/tiles/*.h"):
            self.copy_file(os.path.join(ROOT, header), os.path.join(target, os.path.basename(header)))


ext_modules, cmdclass = extensions_and_cmdclass()
cmdclass = {**cmdclass, "build_py": BuildPyWithTiles}

setup(
    name="flashcore",
    version="0.1.0",
    description="FlashAttention-class attention kernels for H100 (sm_90a) and MI300X (gfx942)",
    packages=find_packages(include=["flashcore", "flashcore.*"]),
    python_requires=">=3.10",
    install_requires=["torch"],
    ext_modules=ext_modules,
    cmdclass=cmdclass,
    zip_safe=False,
)
