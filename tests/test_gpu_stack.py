"""Which driver, CUDA, TensorRT, Triton and Python go together (exporters/gpu_stack.py): the
TensorRT pin follows the deployed NGC image, a driver too old for a CUDA build is named as
such (not "no GPU"), onnxruntime vs onnxruntime-gpu is explained, and the package runs on
Python 3.10 (the NGC image's Python in older releases, and older GPU hosts), checked with vermin."""
from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from mmserve.exporters.gpu_stack import (
    DOCKERFILE,
    IMAGES,
    ORT_GPU_ADVICE,
    StackError,
    deployed_image,
    deployed_tag,
    driver_runs_cuda,
    host_tensorrt,
    ort_provider_advice,
    torch_cuda_verdict,
)

ROOT = Path(__file__).resolve().parent.parent


def test_the_tensorrt_pin_follows_the_deployed_triton_image():
    """Defect 2 (and the image move of issue 18): the TensorRT a GPU host installs is the image's own."""
    image = deployed_image()
    assert image.tag == deployed_tag(DOCKERFILE)
    major, minor, patch = image.tensorrt.split(".")[:3]
    assert image.tensorrt_requirement == f"tensorrt-cu{image.cuda_major}=={major}.{minor}.{patch}.*"
    assert int(major) >= 10  # int64 token ids (defect 11)
    assert image.python in ("3.10", "3.11", "3.12")  # what requires-python admits


def test_an_image_missing_from_the_table_is_named_with_what_to_add(tmp_path: Path):
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("ARG TRITON_IMAGE=nvcr.io/nvidia/tritonserver:99.01-py3\nFROM ${TRITON_IMAGE}\n")
    with pytest.raises(StackError, match=r"tritonserver:99\.01-py3.*add its row"):
        deployed_image(dockerfile)
    dockerfile.write_text("FROM ubuntu\n")
    with pytest.raises(StackError, match="no `ARG TRITON_IMAGE="):
        deployed_tag(dockerfile)


def test_the_known_images_are_internally_consistent():
    for tag, image in IMAGES.items():
        assert image.tag == tag and re.fullmatch(r"\d+\.\d+\.\d+\.\d+", image.tensorrt)
        assert image.cuda_major in (12, 13)


def test_a_host_whose_driver_cannot_run_the_images_cuda_gets_the_same_tensorrt_for_cuda_12():
    image = IMAGES["25.08"]  # CUDA 13: needs R580
    assert host_tensorrt(image, "580.95.05") == (image.tensorrt_requirement, None)
    requirement, note = host_tensorrt(image, "550.54.15")
    assert requirement == "tensorrt-cu12==10.13.2.*"
    assert "driver 550.54.15 cannot run CUDA 13.0.0" in note and "upgrade the driver" in note


def test_a_cuda_13_torch_on_an_older_driver_is_named_as_such_not_no_gpu():
    """Defect 5: torch 2.14 from PyPI is a CUDA 13 build; with R550 it sees no GPU, which is not 'no GPU'."""
    assert not driver_runs_cuda("550.54.15", "13.0") and driver_runs_cuda("580.65.06", "13.0")
    assert driver_runs_cuda("550.54.15", "12.8") and not driver_runs_cuda("470.57", "12.1")
    verdict = torch_cuda_verdict("2.14.1+cu130", "13.0", "550.54.15")
    assert "CUDA 13.0 build, which needs NVIDIA driver >= 580.65" in verdict and "The GPU is there" in verdict
    assert torch_cuda_verdict("2.14.1+cu130", "13.0", "580.95.05") is None
    assert "CPU-only build" in torch_cuda_verdict("2.14.1+cpu", None, "580.95.05")


def test_the_onnxruntime_advice_says_to_remove_the_cpu_package_first():
    """Defect 6: onnxruntime and onnxruntime-gpu share one module directory."""
    advice = ort_provider_advice("CUDAExecutionProvider", ["CPUExecutionProvider"], "1.32.0")
    assert "no CUDAExecutionProvider" in advice and ORT_GPU_ADVICE in advice
    assert advice.index("pip uninstall -y onnxruntime") < advice.index("pip install onnxruntime-gpu")


def test_the_gpu_check_script_installs_the_pin_and_swaps_onnxruntime_for_the_gpu_package():
    """Defect 1: the script sets itself up from a bare clone with PyPI only (no apt, no make setup)."""
    script = (ROOT / "scripts" / "gpu_check.sh").read_text()
    commands = "\n".join(line for line in script.splitlines() if not line.lstrip().startswith("#"))
    assert not re.search(r"\bapt(-get)?\b|\bdpkg\b|make setup|docker ", commands)
    assert "install -q --upgrade pip uv" in script and '-e "$root[train,server]"' in script
    assert "host_tensorrt(deployed_image(), driver_version())" in script
    assert script.index("uninstall -q -y onnxruntime onnxruntime-gpu") < script.index('"onnxruntime-gpu[cuda,cudnn]')
    assert subprocess.run(["bash", "-n", str(ROOT / "scripts" / "gpu_check.sh")]).returncode == 0


# ---- Python 3.10 ------------------------------------------------------------------------------------


def test_the_package_runs_on_python_3_10():
    """Defect 3: the NGC image (and older GPU hosts) run Python 3.10; vermin finds nothing newer."""
    vermin = shutil.which("vermin") or str(Path(sys.executable).with_name("vermin"))
    if not Path(vermin).exists():
        pytest.fail("vermin is not installed: it is in the dev extra (pip install -e '.[dev]')")
    folders = [str(ROOT / name) for name in ("mmserve", "client", "exporters", "training")]
    result = subprocess.run([vermin, "-q", "-t=3.10-", "--no-tips", "--violations", "--eval-annotations", *folders],
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr


def test_requires_python_admits_3_10_and_the_images_python():
    text = (ROOT / "pyproject.toml").read_text()
    (spec,) = re.findall(r'^requires-python = "([^"]+)"', text, re.MULTILINE)
    from packaging.specifiers import SpecifierSet

    assert {"3.10", "3.11", deployed_image().python} <= {v for v in ("3.10", "3.11", "3.12") if v in SpecifierSet(spec)}


def test_the_deploy_guide_states_every_row_of_the_table():
    guide = (ROOT / "docs" / "deploy.md").read_text()
    for image in IMAGES.values():
        row = (f"| `tritonserver:{image.tag}-py3` | {image.triton} | {image.cuda} |")
        assert row in guide, f"docs/deploy.md lacks the {image.tag} row of exporters/gpu_stack.py"
        assert f"| {image.tensorrt} | `{image.tensorrt_requirement}` | {image.python} |" in guide
