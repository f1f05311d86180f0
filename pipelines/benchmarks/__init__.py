"""Standing benchmarks, each `python -m pipelines.benchmarks.NAME` (and a make target): extract,
extract_writer, loader, bucket, efficiency, decode, and gpu (every GPU figure, `make bench-gpu`).
The other modules here are their parts: store_writes, extract_measures, efficiency_runs, footage,
loader_training."""
