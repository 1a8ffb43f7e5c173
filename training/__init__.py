"""Fine-tuning for mmserve: data loading, training loops, metrics and checkpoints.

Kept free of heavy imports so `import mmserve.training` is cheap; import the
submodules (`mmserve.training.text`, `.checkpoint`, ...) for the real work.
"""
