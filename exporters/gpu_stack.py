"""Which driver, CUDA, TensorRT and Triton go together: one table, read by the exporters,
the GPU check and the tests.

A TensorRT engine loads only in the TensorRT version that built it (and on the GPU
architecture it was built for), so the TensorRT a GPU host installs from PyPI is pinned to
the one inside the NGC Triton image the project deploys (`docker/Dockerfile`'s
TRITON_IMAGE). The rows come from NVIDIA's Triton container release notes ("Contents of
the Triton Inference Server container", "Driver Requirements"); add the row of a new image
before moving the Dockerfile to it (tests/test_gpu_profile.py fails until then).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

DOCKERFILE = Path(__file__).resolve().parent.parent / "docker" / "Dockerfile"
IMAGE_ARG = "TRITON_IMAGE"


@dataclass(frozen=True)
class TritonImage:
    """One NGC `tritonserver:<tag>-py3` image, as its release notes state it."""

    tag: str  # "24.10"
    triton: str  # the server's own version
    cuda: str  # the CUDA toolkit it is built on
    tensorrt: str  # the TensorRT its tensorrt_plan backend and onnxruntime's TensorRT EP load
    python: str  # the image's Python (its Python backend stub)
    ubuntu: str

    @property
    def cuda_major(self) -> int:
        return int(self.cuda.split(".")[0])

    @property
    def tensorrt_requirement(self) -> str:
        """The pip requirement of the same TensorRT for this CUDA (same major.minor.patch)."""
        major, minor, patch = self.tensorrt.split(".")[:3]
        return f"tensorrt-cu{self.cuda_major}=={major}.{minor}.{patch}.*"


IMAGES = {
    image.tag: image
    for image in (
        TritonImage("24.10", "2.51.0", "12.6.2", "10.5.0.18", "3.10", "22.04"),
        TritonImage("25.08", "2.60.0", "13.0.0", "10.13.2.6", "3.12", "24.04"),
        TritonImage("25.10", "2.62.0", "13.0.2", "10.13.3.9", "3.12", "24.04"),
    )
}

# The oldest driver each CUDA major runs on (CUDA's minor-version compatibility): a build for
# CUDA 13 (torch 2.14 from PyPI, the 25.08+ images) needs R580; CUDA 12 builds run on R525+.
CUDA_MIN_DRIVER = {11: (450, 80), 12: (525, 60), 13: (580, 65)}


class StackError(RuntimeError):
    """The deployed image, or this host, does not fit the table: the message says what to do."""


def deployed_tag(dockerfile: Path = DOCKERFILE) -> str:
    """The NGC release tag (e.g. "24.10") of docker/Dockerfile's default TRITON_IMAGE."""
    text = dockerfile.read_text(encoding="utf-8")
    match = re.search(rf"^ARG {IMAGE_ARG}=\S*tritonserver:(\d+\.\d+)-py3\s*$", text, re.MULTILINE)
    if match is None:
        raise StackError(f"{dockerfile}: no `ARG {IMAGE_ARG}=nvcr.io/nvidia/tritonserver:YY.MM-py3` line")
    return match.group(1)


def deployed_image(dockerfile: Path = DOCKERFILE) -> TritonImage:
    """The table's row for the image the project deploys; a clear error when it has none."""
    tag = deployed_tag(dockerfile)
    if tag not in IMAGES:
        raise StackError(
            f"docker/Dockerfile deploys tritonserver:{tag}-py3, which exporters/gpu_stack.py's IMAGES does not "
            f"list (it has {', '.join(IMAGES)}): add its row (Triton, CUDA, TensorRT, Python from NVIDIA's release "
            "notes for that tag) so the TensorRT pin follows the image"
        )
    return IMAGES[tag]


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def driver_runs_cuda(driver: str, cuda: str) -> bool:
    """Whether an NVIDIA driver (e.g. "550.54.15") runs code built for CUDA `cuda` ("13.0")."""
    need = CUDA_MIN_DRIVER.get(_version(cuda)[0])
    return need is None or _version(driver)[:2] >= need


def torch_cuda_verdict(torch_version: str, torch_cuda: str | None, driver: str | None) -> str | None:
    """Why torch cannot use this GPU although a driver is here (None: it can, or it is not the driver).

    torch 2.14 from PyPI is a CUDA 13 build: with an older driver `torch.cuda.is_available()`
    is False, which is not "no GPU". mmserve needs torch on a GPU host only to export (on CPU).
    """
    if torch_cuda is None:
        return (f"torch {torch_version} is a CPU-only build; exports run on CPU, which is all mmserve needs "
                "torch for on a GPU host")
    if driver and not driver_runs_cuda(driver, torch_cuda):
        need = ".".join(map(str, CUDA_MIN_DRIVER[_version(torch_cuda)[0]]))
        return (f"torch {torch_version} is a CUDA {torch_cuda} build, which needs NVIDIA driver >= {need}; this "
                f"driver is {driver}. The GPU is there: torch just cannot use it (exports still run on CPU). "
                "Upgrade the driver, or install a torch built for this driver's CUDA")
    return None


def host_tensorrt(image: TritonImage, driver: str | None) -> tuple[str, str | None]:
    """(pip requirement, note) of the image's TensorRT for a GPU host with this driver: the
    image's own CUDA flavour when the driver runs it, else the same TensorRT version built for
    CUDA 12 (on PyPI too), with a note saying so (the image itself would not start there)."""
    if driver is None or driver_runs_cuda(driver, image.cuda) or image.cuda_major == 12:
        return image.tensorrt_requirement, None
    need = ".".join(map(str, CUDA_MIN_DRIVER[image.cuda_major]))
    major, minor, patch = image.tensorrt.split(".")[:3]
    return (f"tensorrt-cu12=={major}.{minor}.{patch}.*",
            f"driver {driver} cannot run CUDA {image.cuda} (the tritonserver:{image.tag}-py3 image needs >= {need}): "
            f"TensorRT {image.tensorrt} built for CUDA 12 is used instead; upgrade the driver before deploying that image")


ORT_GPU_ADVICE = (
    "onnxruntime and onnxruntime-gpu install the same `onnxruntime` module directory, and the CPU package "
    "(a base dependency of mmserve) wins when both are installed: `pip uninstall -y onnxruntime` first, then "
    "`pip install onnxruntime-gpu` (scripts/gpu_check.sh does both)"
)


def ort_provider_advice(provider: str, available: list[str], version: str) -> str:
    """Why an onnxruntime execution provider is missing, and what to do."""
    return (f"this onnxruntime ({version}) has no {provider} (it has {', '.join(available)}): {ORT_GPU_ADVICE}")
