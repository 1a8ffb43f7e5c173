"""Benchmarks a serving engineer can trust: `mmserve bench`.

perf_analyzer per pipeline and load level (perf), realistic inputs per kind
(inputs), the same pipeline in-process as the baseline (inprocess), torch vs
ORT fp32 vs INT8 (runtimes), infinity-emb and a naive FastAPI server side by
side (peers, run_peers), scheduling sweeps (tune), and the markdown + PNG
report (report). `run.run_bench` ties them together.
"""
