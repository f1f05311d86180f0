"""Studies, each `python -m pipelines.studies.NAME`: demo (`make demo`), ablation (`make
ablation-NAME`) and views (`make study-views`). The ablation_* modules are the ablation's parts:
its plan, its worker runs, one setting, its report and the storage table."""
