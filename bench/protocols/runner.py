"""``run_protocol``: one evaluation run, from model and dataset specs to ``result.json``.

The same call runs on CPU, one GPU, or under ``accelerate launch`` with several
processes; a rerun in the same workdir resumes from the last checkpoint, and a finished
workdir returns its stored result without training.
"""

from __future__ import annotations

import importlib
import json
import time
from pathlib import Path
from typing import Any

from accelerate.utils import set_seed

from bench.diskio import atomic_write_text, check_writable_dir
from bench.jsonsafe import json_safe
from bench.protocols.checkpointing import finish_workdir, run_fingerprint
from bench.protocols.config import (
    PROTOCOL_VERSION,
    SETTINGS_CLASSES,
    FineTuneSettings,
    ProtocolSettings,
    canonical_protocol,
    resolve_settings,
)
from bench.protocols.context import RunContext
from bench.protocols.runtime import device_description, make_accelerator

RESULT_NAME = "result.json"
PROTOCOL_MODULES = {
    "fine_tune": "bench.protocols.finetune",
    "linear_probe": "bench.protocols.linear_probe",
    "layerwise_probe": "bench.protocols.layerwise",
}
MODEL_KEYS = ("adapter", "size", "checkpoint", "sha256", "options")
DATASET_KEYS = ("name", "root", "layout")


def _spec(given: dict[str, Any], keys: tuple[str, ...], what: str, required: tuple[str, ...]):
    unknown = sorted(set(given) - set(keys))
    if unknown:
        raise ValueError(f"unknown {what} key(s) {unknown}; allowed: {', '.join(keys)}")
    missing = [k for k in required if not given.get(k)]
    if missing:
        raise ValueError(f"{what} spec needs {', '.join(missing)}")
    return {k: given.get(k) for k in keys}


def _settings(
    proto: str, settings: ProtocolSettings | dict | None, dataset: str, model: dict
) -> ProtocolSettings:
    if isinstance(settings, ProtocolSettings):
        if not isinstance(settings, SETTINGS_CLASSES[proto]):
            raise ValueError(
                f"{type(settings).__name__} given for protocol {proto}; expected "
                f"{SETTINGS_CLASSES[proto].__name__}"
            )
        return settings
    return resolve_settings(proto, dataset, model["adapter"], model["size"], settings or {})


def _write_json(obj: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str, allow_nan=False))


def run_protocol(
    protocol: str,
    model: dict[str, Any],
    dataset: dict[str, Any],
    settings: ProtocolSettings | dict[str, Any] | None = None,
    workdir: str | Path = "work",
    seed: int = 0,
    progress: bool = True,
) -> dict[str, Any]:
    """Run ``protocol`` ('fine_tune', 'linear_probe', 'layerwise_probe') and return its result.

    ``model``: adapter, size, checkpoint=None, sha256=None, options={} (adapter options,
    e.g. ``depth`` or ``last_heads``). ``dataset``: name, root, layout=None. ``settings``:
    a settings object, or overrides applied on top of the resolved defaults.
    """
    from bench.adapter import downstream_options, load_backbone
    from bench.data import get_dataset_info
    from bench.data.check import quick_check
    from bench.trackers import finish_trackers, start_trackers

    proto = canonical_protocol(protocol)
    workdir = Path(workdir)
    model = _spec(model, MODEL_KEYS, "model", ("adapter", "size"))
    model["options"] = dict(model["options"] or {})
    dataset = _spec(dataset, DATASET_KEYS, "dataset", ("name", "root"))
    dataset["root"] = str(dataset["root"])
    s = _settings(proto, settings, dataset["name"], model)
    settings_dict = s.model_dump(mode="json")
    fingerprint = run_fingerprint(
        {"protocol": proto, "version": PROTOCOL_VERSION, "settings": settings_dict,
         "model": model, "dataset": {k: dataset[k] for k in ("name", "layout")},
         "seed": seed}
    )
    result_path = workdir / RESULT_NAME
    if result_path.exists():
        stored = json.loads(result_path.read_text())
        if stored.get("fingerprint") != fingerprint:
            raise ValueError(
                f"{result_path} holds the result of a different run (other settings, model, "
                "dataset or seed); use a fresh workdir"
            )
        return stored
    info = get_dataset_info(dataset["name"])
    # A bad folder must fail in seconds, before a model is built or a GPU is touched.
    splits = dict.fromkeys((s.train_split or info.train_split,
                            s.eval_split or info.default_eval_split))
    for split in splits:
        quick_check(dataset["name"], dataset["root"], split, layout=dataset["layout"])
    check_writable_dir(workdir, "workdir")  # before training, not when saving its result

    accelerator = make_accelerator(s.mixed_precision, log_dir=workdir / "logs")
    set_seed(seed)
    drop_path = s.drop_path if isinstance(s, FineTuneSettings) else 0.0
    # The method's downstream build (UNIP: uniform heads), under the user's options.
    backbone = load_backbone(
        model["adapter"], model["size"], model["checkpoint"], img_size=s.crop_size,
        sha256=model["sha256"], drop_path_rate=drop_path,
        **downstream_options(model["adapter"], model["options"]),
    )
    workdir.mkdir(parents=True, exist_ok=True)
    ctx = RunContext(
        protocol=proto, settings=s, info=info, dataset=dataset, backbone=backbone,
        accelerator=accelerator, workdir=workdir, seed=seed, fingerprint=fingerprint,
        progress=progress,
    )
    start_trackers(
        accelerator, f"{proto}-{dataset['name']}-{model['adapter']}-{model['size']}-s{seed}",
        {"protocol": proto, "model": model, "dataset": dataset["name"], "seed": seed,
         "settings": settings_dict},
    )
    t0 = time.perf_counter()
    try:
        out = importlib.import_module(PROTOCOL_MODULES[proto]).run(ctx)
    finally:
        finish_trackers(accelerator)
    result = {
        "protocol": proto,
        "protocol_version": PROTOCOL_VERSION,
        **out,
        "settings": settings_dict,
        "backbone": backbone.describe(),
        "model": model,
        "dataset": {**dataset, "train_split": ctx.train_split, "eval_split": ctx.eval_split},
        "seed": seed,
        "inference": {"mode": s.inference, "crop": s.slide_crop, "stride": s.slide_stride},
        "device": device_description(accelerator),
        "wall_time_s": round(time.perf_counter() - t0, 3),
        "fingerprint": fingerprint,
    }
    # What is returned = what is stored: strict JSON, undefined per-class IoU as None.
    result = json.loads(json.dumps(json_safe(result), default=str))
    if accelerator.is_main_process:
        _write_json(result, result_path)
        finish_workdir(workdir, s.keep_training_state)  # only once the result is safe
    accelerator.wait_for_everyone()
    return result
