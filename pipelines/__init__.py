"""advise-cache's benchmarks and studies, each a module run from the repository root:

    python -m pipelines.benchmarks.loader              # make bench-loader: a standing benchmark
    python -m pipelines.studies.ablation spatial-res   # make ablation-spatial-res: a study
    python -m pipelines.sections                       # BENCHMARKS.md rendered from BENCHMARKS.json

`benchmarks/` measure the tool, and are rerun as it changes; `studies/` run the paper's protocol
(`advise_cache.protocol`) for results: the demo, the ablations, the views study. `common` holds
what they share (flags, machine facts, number formats, child processes, the synthetic stores);
`sections` keeps every result as rows in BENCHMARKS.json and renders BENCHMARKS.md from them;
`readers` the minimal readers the loader benchmarks and the storage ablation compare against.
The stores and videos they build come from `advise_cache.testing`.
"""
