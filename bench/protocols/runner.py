"""``run_protocol``: one evaluation run, from model and dataset specs to ``result.json``.

The same call runs on CPU, one GPU, or under ``accelerate launch`` with several
processes; a rerun in the same workdir resumes from the last checkpoint, and a finished
workdir returns its stored result without training, once the data's fingerprint and the
weights' digest show it is the same run (see :func:`run_identity`).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from accelerate.utils import set_seed

from bench.diskio import atomic_write_text, check_writable_dir
from bench.identity import IDENTITY_SCHEME, data_content, differences, matched_on, run_splits
from bench.jsonsafe import json_safe
from bench.protocols.checkpointing import finish_workdir, run_fingerprint
from bench.protocols.config import ProtocolSettings, identity_settings, resolve_settings
from bench.protocols.context import RunContext
from bench.protocols.registry import Protocol, get_protocol
from bench.protocols.runtime import device_description, make_accelerator

RESULT_NAME = "result.json"
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
    proto: Protocol, settings: ProtocolSettings | dict | None, dataset: str, model: dict
) -> ProtocolSettings:
    if isinstance(settings, ProtocolSettings):
        if not isinstance(settings, proto.settings):
            raise ValueError(
                f"{type(settings).__name__} given for protocol {proto.name}; expected "
                f"{proto.settings.__name__}"
            )
        return settings
    return resolve_settings(proto.name, dataset, model["adapter"], model["size"],
                            settings or {})


def _write_json(obj: dict, path: Path) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, default=str, allow_nan=False))


def weights_digest(model: dict[str, Any]) -> str | None:
    """sha256 of the weights the run loads (None: random init); checks a given ``sha256``.

    A local file or an export folder is hashed (cached by path, size, mtime and inode), a
    URL downloaded once, so a replaced file is a different run whatever its name.
    """
    from bench.checkpoints.resolve import resolve_checkpoint

    if model["checkpoint"] is None:
        return None
    return resolve_checkpoint(model["checkpoint"], model["sha256"])[1]


def run_identity(
    proto: str, settings: dict[str, Any], model: dict[str, Any], dataset: dict[str, Any],
    splits: list[str], seed: int,
) -> dict[str, Any]:
    """Everything that decides the run's numbers; paths and names of files are not in it.

    The version is the protocol's own: bumping one protocol's version changes the
    identity of its runs only."""
    return {
        "scheme": IDENTITY_SCHEME,
        "protocol": proto,
        "protocol_version": get_protocol(proto).version,
        "model": {"adapter": model["adapter"], "size": model["size"],
                  "weights": weights_digest(model), "options": model["options"]},
        "dataset": {"name": dataset["name"], "layout": dataset["layout"],
                    "content": data_content(dataset["name"], dataset["root"], splits,
                                            dataset["layout"])},
        # What to keep on disk is not part of what is computed; nor is an added option
        # left at its default.
        "settings": identity_settings(settings, get_protocol(proto).settings),
        "seed": seed,
    }


def _stored_result(
    path: Path, identity: dict[str, Any], fingerprint: str, log: Callable[[str], None] | None
) -> dict[str, Any]:
    """The finished run in ``path`` when it is this run; else a ValueError saying what differs."""
    stored = json.loads(path.read_text())
    if stored.get("fingerprint") != fingerprint:
        old = stored.get("identity")
        what = ("; ".join(differences(old, identity)) if isinstance(old, dict)
                else "it was written before results recorded their data and weights digests")
        raise ValueError(
            f"{path} holds the result of a different run ({what}); use a fresh workdir, "
            "or empty this one to run there"
        )
    if int(os.environ.get("RANK", "0")) == 0:
        (log or _to_stderr)(f"reusing the finished run in {path.parent} (matched on "
                            f"{matched_on(identity)})")
    return stored


def _to_stderr(message: str) -> None:
    print(message, file=sys.stderr)


def run_protocol(
    protocol: str,
    model: dict[str, Any],
    dataset: dict[str, Any],
    settings: ProtocolSettings | dict[str, Any] | None = None,
    workdir: str | Path = "work",
    seed: int = 0,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Run ``protocol`` (a registered protocol's name or alias) and return its result.

    ``model``: adapter, size, checkpoint=None, sha256=None, options={} (adapter options,
    e.g. ``depth`` or ``last_heads``). ``dataset``: name, root, layout=None. ``settings``:
    a settings object, or overrides applied on top of the resolved defaults.

    A workdir that already holds this run's ``result.json`` returns it without training,
    after checking the data and the checkpoint, and says so through ``log`` (default:
    stderr). One of a different run is refused with what differs.
    """
    from bench.backbones.adapter import downstream_options, load_backbone
    from bench.data import get_dataset_info
    from bench.data.check import quick_check
    from bench.trackers import finish_trackers, start_trackers

    declared = get_protocol(protocol)
    proto = declared.name
    workdir = Path(workdir)
    model = _spec(model, MODEL_KEYS, "model", ("adapter", "size"))
    model["options"] = dict(model["options"] or {})
    dataset = _spec(dataset, DATASET_KEYS, "dataset", ("name", "root"))
    dataset["root"] = str(dataset["root"])
    s = _settings(declared, settings, dataset["name"], model)
    settings_dict = s.model_dump(mode="json")
    info = get_dataset_info(dataset["name"])
    # A bad folder must fail in seconds, before a model is built or a GPU is touched, and
    # before a stored result is returned: the result must be of this data.
    splits = run_splits(settings_dict, dataset["name"])
    for split in splits:
        quick_check(dataset["name"], dataset["root"], split, layout=dataset["layout"])
    identity = run_identity(proto, settings_dict, model, dataset, splits, seed)
    fingerprint = run_fingerprint(identity)
    result_path = workdir / RESULT_NAME
    if result_path.exists():
        return _stored_result(result_path, identity, fingerprint, log)
    check_writable_dir(workdir, "workdir")  # before training, not when saving its result

    accelerator = make_accelerator(s.mixed_precision, log_dir=workdir / "logs")
    set_seed(seed)
    # Stochastic depth is a setting of the protocols that train the backbone: a settings
    # class with a drop_path field asks for it, the others get a backbone without.
    drop_path = float(getattr(s, "drop_path", 0.0))
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
        progress=progress, primary=declared.primary,
    )
    start_trackers(
        accelerator, f"{proto}-{dataset['name']}-{model['adapter']}-{model['size']}-s{seed}",
        {"protocol": proto, "model": model, "dataset": dataset["name"], "seed": seed,
         "settings": settings_dict},
    )
    t0 = time.perf_counter()
    try:
        out = declared.run_fn()(ctx)
    finally:
        finish_trackers(accelerator)
    result = {
        "protocol": proto,
        "protocol_version": declared.version,
        **out,
        "settings": settings_dict,
        "backbone": backbone.describe(),
        "model": model,
        "dataset": {**dataset, "train_split": ctx.train_split, "eval_split": ctx.eval_split},
        "seed": seed,
        "inference": {"mode": s.inference, "crop": s.slide_crop, "stride": s.slide_stride},
        "device": device_description(accelerator),
        "wall_time_s": round(time.perf_counter() - t0, 3),
        "identity": identity,
        "fingerprint": fingerprint,
    }
    # What is returned = what is stored: strict JSON, undefined per-class IoU as None.
    result = json.loads(json.dumps(json_safe(result), default=str))
    if accelerator.is_main_process:
        _write_json(result, result_path)
        finish_workdir(workdir, s.keep_training_state)  # only once the result is safe
    accelerator.wait_for_everyone()
    return result
