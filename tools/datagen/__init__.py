"""The pieces of tools/make_datasets.py, which regenerates training/data/: one module per data set."""
