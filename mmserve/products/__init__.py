"""Products from examples (`mmserve products create`, `mmserve jobs`, the console's New product
page): data checks and split (data.py), a head over a shared encoder (head.py), fine-tunes as
queued jobs (jobs.py), the report (report.py), runs on disk (runs.py), and create/publish
(create.py). docs/products.md walks through it."""
