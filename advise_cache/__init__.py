"""advise-cache: AdViSe as a two-stage feature cache.

Stage 1 (`extract`) runs a frozen image model once per video frame and stores the
patch-token maps in a Zarr store; stage 2 (`train`, `finetune`, `evaluate`) trains a
small temporal module from that store without decoding video or running the image model.
"""

__version__ = "0.1.0"
