"""Settings from a file: `--config FILE` (YAML or JSON) for `train`, `finetune` and `extract`.

    advise-cache train --config runs/a/config.json --out runs/b      # run a again, into runs/b
    advise-cache finetune --config ft.yaml --lr 5e-4                 # the file, one flag changed

A training file holds `TrainConfig` fields, the sampler's and the TMM's nested under `sampler:`
and `tmm:`; any it leaves out take the values of its `preset:` (or `ours`). A run folder's
`config.json` (its `CheckpointMeta`, the settings under `config`) is such a file, so a run
replays from its own folder. An extraction file holds `ExtractConfig` fields. Flags given on
the command line override the file; a key no config has is one error naming it. Torch-free, like
configs.py: the CLI reads files before importing anything heavy.
"""

from __future__ import annotations

import json
from dataclasses import fields, is_dataclass, replace
from pathlib import Path

from .configs import ExtractConfig, SamplerConfig, TMMConfig, TrainConfig, preset_config
from .errors import AdviseCacheError, first_line
from .storage import store_location

_NESTED = {"sampler": SamplerConfig, "tmm": TMMConfig}
_PATHS = ("out", "init", "local_cache", "root", "annotations")  # text in a file, Path in a config


def read_config(path: Path) -> dict:
    """A mapping from a YAML or JSON file (JSON is YAML too), or one clear error."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise AdviseCacheError(f"--config {path}: {e.strerror or first_line(e)}") from None
    try:
        if path.suffix.lower() == ".json":
            data = json.loads(text)
        else:
            import yaml

            data = yaml.safe_load(text)
    except Exception as e:  # json's or yaml's parse errors
        raise AdviseCacheError(
            f"--config {path} is not valid {'JSON' if path.suffix.lower() == '.json' else 'YAML'}: {first_line(e)}"
        ) from None
    if not isinstance(data, dict):
        raise AdviseCacheError(f"--config {path}: expected a mapping of settings, got {type(data).__name__}")
    return data


def _check_keys(data: dict, config_type, path: Path, prefix: str = "") -> None:
    known = {f.name: f for f in fields(config_type)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise AdviseCacheError(
            f"--config {path}: unknown setting '{prefix}{unknown[0]}' (a {config_type.__name__} has {', '.join(known)})"
        )
    for name, nested in _NESTED.items():
        if name in data and config_type is TrainConfig:
            if not isinstance(data[name], dict):
                raise AdviseCacheError(f"--config {path}: {name!r} must be a mapping of {nested.__name__} settings")
            _check_keys(data[name], nested, path, f"{name}.")


def _typed(data: dict) -> dict:
    """File values as a config holds them: paths as Path, the store as a path or URL, lists as tuples."""
    out = {}
    for key, value in data.items():
        if key in _PATHS and value is not None:
            value = Path(value)
        elif key == "cache" and value is not None:
            value = store_location(value, "cache")
        elif isinstance(value, list):
            value = tuple(value)
        out[key] = value
    return out


def train_config_from(path: Path, task: str, preset: str | None = None) -> TrainConfig:
    """The TrainConfig a file describes, on top of `preset` when the command line gives one, else
    the file's own `preset:` (else `ours`). A run folder's config.json is unwrapped."""
    data = read_config(path)
    if isinstance(data.get("config"), dict) and "task" in data:  # a run folder's config.json
        data = data["config"]
    _check_keys(data, TrainConfig, path)
    if data.get("task", task) != task:
        command = "train" if data["task"] == "prp" else "finetune"
        raise AdviseCacheError(f"--config {path} is a {data['task']} run: replay it with `advise-cache {command}`")
    data = _typed(data)
    chosen = preset or data.get("preset") or "ours"
    try:
        return preset_config(
            chosen,
            tmm=data.pop("tmm", None),
            sampler=data.pop("sampler", None),
            **{k: v for k, v in data.items() if k not in ("preset", "task")},
            task=task,
        )
    except TypeError as e:
        raise AdviseCacheError(f"--config {path}: {first_line(e)}") from None


def extract_config_from(path: Path, flags: ExtractConfig, given: set[str]) -> ExtractConfig:
    """`flags` (the command line's ExtractConfig) with the file's settings in place of those the
    command line did not give."""
    data = read_config(path)
    _check_keys(data, ExtractConfig, path)
    store = data.pop("out", None)  # a store: a path or a bucket URL
    data = {k: v for k, v in _typed(data).items() if k not in given}
    if store is not None and "out" not in given:
        data["out"] = store_location(store, "out")
    if isinstance(data.get("shard"), str):  # "K/N", as the flag takes it
        from .extract import parse_shard

        data["shard"] = parse_shard(data["shard"])
    return replace(flags, **data)


def given_flags(ctx) -> set[str]:
    """The parameters a command's user gave (on the command line or through the environment),
    not left at their defaults: what overrides a --config file."""
    return {name for name in ctx.params if ctx.get_parameter_source(name).name in ("COMMANDLINE", "ENVIRONMENT")}


def overlay(base, flags, given: set[str]):
    """`base` with the settings named in `given` taken from `flags` (both configs of one type):
    a name is a field of the config, or of its nested sampler or TMM config."""
    changed = {}
    nested: dict[str, dict] = {}
    for f in fields(base):
        value = getattr(base, f.name)
        if is_dataclass(value):  # a nested config: its fields are the flags (--tmm is TMMConfig.tmm)
            inner = {g.name for g in fields(value)} & given
            if inner:
                nested[f.name] = {k: getattr(getattr(flags, f.name), k) for k in inner}
        elif f.name in given:
            changed[f.name] = getattr(flags, f.name)
    return replace(base, **changed, **{k: replace(getattr(base, k), **v) for k, v in nested.items()})
