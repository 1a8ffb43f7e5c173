"""`python -m mmserve.bench.gpu` (what scripts/gpu_check.sh runs)."""
from __future__ import annotations

import os
import sys
from typing import Sequence

from mmserve.bench.gpu.check import run_check
from mmserve.bench.gpu.config import EXIT_NO_GPU, parse_args
from mmserve.bench.gpu.device import NoGpuError


def main(argv: Sequence[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    config = parse_args(argv)
    try:
        report, code = run_check(config)
    except NoGpuError as error:
        print(f"gpu_check: {error}", file=sys.stderr)
        return EXIT_NO_GPU
    print(report.markdown())
    print(f"gpu_check: report in {config.out / 'gpu_check.md'} and {config.out / 'gpu_check.json'}", file=sys.stderr)
    return code


if __name__ == "__main__":
    sys.exit(main())
