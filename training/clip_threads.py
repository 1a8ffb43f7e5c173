"""How many torch threads a CLIP training run uses on the CPU: a choice that depends on the
model's size and on how busy the machine is, so the large-model case is measured at start."""
from __future__ import annotations

import time
from typing import Any

import torch

from mmserve.training import distributed
from mmserve.training.loop import available_cores, configure_runtime

# A model this large spends seconds per step in torch, and its loader a few ms per picture:
# every core helps it on a quiet machine (issue 23: ViT-B-32 LoRA ran "1 torch threads" on 2
# cores). On a busy one the opposite: measured on this 2-core VM at load average ~20, ViT-B-32
# forward + backward at batch 8 took 18.3-18.5 s a step with 1 thread and 73-90 s with 2 (a
# parallel section waits for its slowest thread, and each waits for a core). So such a model
# gets whichever of the two is faster on its own forward pass at start (threads_by_trial).
# Smaller models keep a core for the loader.
LARGE_MODEL_PARAMETERS = 20_000_000


def configure_threads(workers: int, parameters: int = 0) -> int:
    """Torch threads = cores left after the loader processes, or every core (this process's
    share under torchrun) for a model of LARGE_MODEL_PARAMETERS or more.

    Decoding and augmenting run in the loader process, in parallel with the step. A
    small model gains little from a second intra-op thread, and intra-op threads that
    compete for a core with the loader (or anything else) slow a step down many times;
    a real-size model's step is long enough that the loader's share is noise.
    """
    configure_runtime()
    if parameters >= LARGE_MODEL_PARAMETERS:
        return torch.get_num_threads()  # configure_runtime's: every core of this process's share
    threads = max(1, available_cores() - workers)
    torch.set_num_threads(threads)
    return threads


def threads_by_trial(model: torch.nn.Module, tokenizer: Any, workers: int, rounds: int = 2) -> int:
    """For a real-size model on the CPU: every core or cores minus the loaders, whichever runs a
    forward pass of 2 pairs faster here and now (eval mode, no gradients, its own random
    generator: training is not changed)."""
    candidates = sorted({torch.get_num_threads(), max(1, available_cores() - workers)}, reverse=True)
    if len(candidates) == 1 or distributed.device().type != "cpu":
        return candidates[0]
    visual = (model.get_base_model() if hasattr(model, "get_base_model") else model).visual  # under peft
    size = visual.image_size if isinstance(visual.image_size, (tuple, list)) else (visual.image_size, visual.image_size)
    images = torch.randn(2, 3, *size, generator=torch.Generator().manual_seed(0))
    texts = tokenizer(["a photo of a dog", "a photo of a cat"])
    was_training = model.training
    model.eval()
    best: dict[int, float] = {}
    try:
        with torch.no_grad():
            for _ in range(rounds):  # interleaved: a load that changes meanwhile hits both
                for threads in candidates:
                    torch.set_num_threads(threads)
                    started = time.perf_counter()
                    model(images, texts)
                    best[threads] = min(best.get(threads, float("inf")), time.perf_counter() - started)
    finally:
        model.train(was_training)
    chosen = min(best, key=best.get)
    torch.set_num_threads(chosen)
    return chosen
