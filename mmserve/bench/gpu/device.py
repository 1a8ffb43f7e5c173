"""The GPU, its driver and the libraries, each problem named for what it is.

"No GPU" means no NVIDIA driver. A driver with a torch or onnxruntime that cannot use it
is a different problem with a different fix, and is reported as such (exporters/gpu_stack.py).
"""
from __future__ import annotations

import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

from mmserve.exporters.gpu_stack import ORT_GPU_ADVICE, torch_cuda_verdict

DRIVER_FILE = Path("/proc/driver/nvidia/version")


class NoGpuError(RuntimeError):
    """No usable NVIDIA GPU: the measurements cannot run here."""


def parse_driver_version(text: str) -> str | None:
    """The version in /proc/driver/nvidia/version's text (proprietary or open kernel module)."""
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+\.\d+(?:\.\d+)?)", text)
    return match.group(1) if match else None


def driver_version() -> str | None:
    """The NVIDIA kernel driver's version (e.g. "550.54.15"), or None without one."""
    if DRIVER_FILE.exists():
        version = parse_driver_version(DRIVER_FILE.read_text(errors="replace"))
        if version:
            return version
    smi = shutil.which("nvidia-smi")
    if smi:
        result = subprocess.run([smi, "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, check=False, timeout=30)
        if result.returncode == 0 and result.stdout.strip():
            return result.stdout.strip().splitlines()[0]
    return None


def detect_gpu() -> dict[str, Any]:
    """Device 0 as the CUDA runtime sees it, or NoGpuError naming the real reason."""
    from mmserve.exporters.cuda_runtime import CudaError, CudaRuntime

    driver = driver_version()
    if driver is None and not Path("/dev/nvidia0").exists():
        raise NoGpuError(
            "no GPU: this machine has no NVIDIA driver (/proc/driver/nvidia absent, no nvidia-smi, no /dev/nvidia0). "
            "Run the check on a machine with an NVIDIA GPU, or `--dry-run` to run every step short of CUDA here."
        )
    try:
        cuda = CudaRuntime.load()
        count = cuda.device_count()
        runtime = cuda.version()
    except CudaError as error:
        raise NoGpuError(f"an NVIDIA driver ({driver}) is here but the CUDA runtime cannot use it: {error}. "
                         "Check that the driver is at least what this CUDA runtime needs, and CUDA_VISIBLE_DEVICES") from error
    if count < 1:
        raise NoGpuError(f"an NVIDIA driver ({driver}) is here but no device is visible (check CUDA_VISIBLE_DEVICES)")
    return {"driver": driver, "cuda_runtime": runtime, "driver_cuda": cuda.driver_version(), "devices": count,
            "capability": cuda.capability(0), "name": _gpu_name()}


def _gpu_name() -> str:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return "?"
    result = subprocess.run([smi, "--query-gpu=name,memory.total", "--format=csv,noheader"],
                            capture_output=True, text=True, check=False, timeout=30)
    return result.stdout.strip().splitlines()[0] if result.returncode == 0 and result.stdout.strip() else "?"


def library_versions(driver: str | None = None) -> dict[str, str]:
    """Each library's version, and what stops it from using this GPU when something does."""
    versions = {"python": platform.python_version()}
    for module in ("torch", "onnxruntime", "tensorrt", "onnx"):
        try:
            versions[module] = __import__(module).__version__
        except ImportError:
            versions[module] = "absent"
    try:
        import torch

        verdict = torch_cuda_verdict(torch.__version__, torch.version.cuda, driver)
        if verdict:
            versions["torch note"] = verdict
    except ImportError:
        pass
    try:
        import onnxruntime as ort

        versions["onnxruntime providers"] = ",".join(ort.get_available_providers())
        if "CUDAExecutionProvider" not in ort.get_available_providers():
            versions["onnxruntime note"] = ORT_GPU_ADVICE
    except ImportError:
        pass
    return versions
