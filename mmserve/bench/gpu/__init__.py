"""The GPU check (`scripts/gpu_check.sh`, `python -m mmserve.bench.gpu`): one command that
exports the default encoders, builds TensorRT engines, measures them in-process (TensorRT
FP16, onnxruntime CUDA, onnxruntime TensorRT EP) and serves the fused pipelines on the GPU
through the pip-bundled Triton, within a time budget, writing figures as it goes.

Modules, one job each: `config` (what is measured, the command line), `report` (results,
written to $OUT after every step), `device` (the GPU, the driver, the libraries), `exports`
(the user's own `mmserve export` commands), `runner` (a pipeline's steps before its encoder:
real encoder inputs), `runtimes` (the in-process engines and sessions, timed), `served`
(Triton on the GPU under a client load), `check` (the sequence and the budget).
"""
