"""advise-cache's benchmarks and studies, each a module run from the repository root:

    python -m pipelines.bench_loader        # make bench-loader: a standing benchmark
    python -m pipelines.ablation spatial-res  # make ablation-spatial-res: a study

`bench_*` measure the tool (BENCHMARKS.md); `demo`, `ablation*` and `study_*` run the paper's
protocol for results. `common` holds what they share (flags, machine facts, tables, the
BENCHMARKS.md sections); the stores and videos they build come from `advise_cache.testing`.
"""
