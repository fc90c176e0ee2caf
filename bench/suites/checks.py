"""Checks of a loaded suite: names and settings (always), files on disk (``validate``).

Every problem is located at the line of the key that caused it, so a misspelt adapter,
dataset, protocol or setting points at the exact line of the YAML (or of its include).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from bench.registry import did_you_mean, literal_hint, unknown_name_message
from bench.suites.spec import Suite, SuiteProblem


def _known_datasets() -> list[str]:
    from bench.data import list_datasets

    return list(list_datasets())


def _check_protocol_name(suite: Suite, key_path: tuple, name: str) -> SuiteProblem | None:
    """None for a registered protocol's name; a problem for an alias (suites and run ids
    use the one name) or an unknown name."""
    from bench.protocols.registry import UnknownProtocol, get_protocol, protocol_names

    try:
        canonical = get_protocol(str(name)).name
    except UnknownProtocol:
        known = protocol_names()
        return suite.problem(key_path, unknown_name_message("protocol", name, known))
    if canonical != name:
        return suite.problem(key_path, f"write the protocol as {canonical!r}")
    return None


def _check_setting_keys(
    suite: Suite, protocol: str, values: dict[str, Any], base: tuple
) -> list[SuiteProblem]:
    from bench.protocols.registry import get_protocol

    fields = sorted(get_protocol(protocol).settings.model_fields)
    return [
        suite.problem(
            base + (key,),
            f"unknown setting {key!r} for protocol {protocol}." + did_you_mean(key, fields),
        )
        for key in values
        if key not in fields
    ]


def _override_layers(suite: Suite, mi: int, di: int, protocol: str) -> list[tuple[tuple, dict]]:
    """(key path, values) of every settings layer of one combination, lowest first."""
    spec = suite.spec
    return [
        (("protocols", protocol), suite.protocol_settings(protocol)),
        (("datasets", di, "overrides", protocol), spec.datasets[di].overrides.get(protocol, {})),
        (("models", mi, "overrides", protocol), spec.models[mi].overrides.get(protocol, {})),
    ]


def resolved_settings(suite: Suite, mi: int, di: int, protocol: str) -> Any:
    """Settings of model ``mi`` on dataset ``di``: paper defaults <- suite <- dataset <- model."""
    from bench.protocols.config import resolve_settings

    merged: dict[str, Any] = {}
    for _, values in _override_layers(suite, mi, di, protocol):
        merged.update(values or {})
    m, d = suite.spec.models[mi], suite.spec.datasets[di]
    return resolve_settings(protocol, d.name, m.adapter, m.size, merged)


def _settings_problems(suite: Suite, mi: int, di: int, protocol: str) -> list[SuiteProblem]:
    layers = _override_layers(suite, mi, di, protocol)
    try:
        settings = resolved_settings(suite, mi, di, protocol)
    except ValidationError as exc:
        out = []
        for err in exc.errors():
            field = str(err["loc"][0]) if err["loc"] else ""
            # Blame the most specific layer that set the field; defaults blame the protocol.
            where: tuple = ("protocols", protocol)
            for path, values in layers:
                if field in (values or {}):
                    where = path + (field,)
            got = f" (got {err['input']!r})" if err["type"] == "literal_error" else ""
            out.append(suite.problem(where, f"{err['msg']}{got}" + literal_hint(err)))
        return out
    except ValueError as exc:
        return [suite.problem(("datasets", di), str(exc))]
    return _block_problems(suite, mi, protocol, layers, settings)


def _model_depth(suite: Suite, mi: int) -> int | None:
    """Blocks of model ``mi`` as the suite gives them (``options.depth`` or its size);
    None where the checkpoint decides (a Hugging Face export folder)."""
    from bench.backbones.adapter import AdapterError, get_adapter

    m = suite.spec.models[mi]
    if m.checkpoint and m.checkpoint.startswith("hf://"):
        from bench.checkpoints.hub import HubError, parse_hub_path

        try:  # hf://owner/repo is an export folder; a malformed one is reported elsewhere
            if parse_hub_path(m.checkpoint).is_folder:
                return None
        except HubError:
            return None
    elif m.checkpoint and Path(m.checkpoint).expanduser().is_dir():
        return None
    if m.options.get("depth") is not None:
        return int(m.options["depth"])
    try:
        return get_adapter(m.adapter).size(m.size).depth
    except AdapterError:
        return None  # an unknown adapter or size is reported by check_semantics


def _block_problems(
    suite: Suite, mi: int, protocol: str, layers: list[tuple[tuple, dict]], settings: Any
) -> list[SuiteProblem]:
    """Blocks read (the protocol's ``blocks_setting``) that the model does not have: every
    run would fail."""
    from bench.protocols.registry import get_protocol

    key = get_protocol(protocol).blocks_setting
    blocks = getattr(settings, key, "all") if key else "all"
    if blocks == "all" or getattr(settings, "neck", "multilevel") != "multilevel":
        return []  # LL-FPN and plug-in necks choose their own blocks
    blocks = [blocks] if isinstance(blocks, int) else list(blocks)
    depth = _model_depth(suite, mi)
    bad = [i for i in blocks if depth is not None and not -depth <= i < depth]
    if not bad:
        return []
    m = suite.spec.models[mi]
    where: tuple = ("models", mi) + (
        ("options", "depth") if m.options.get("depth") is not None else ("size",)
    )
    for path, values in layers:
        if key in (values or {}):
            where = path + (key,)
    return [suite.problem(
        where,
        f"blocks {bad} of {blocks} are out of range for models[{mi}] "
        f"({m.label}-{m.size}: {depth} blocks, zero-based); set {protocol}.{key} "
        f"to blocks below {depth}",
    )]


def check_semantics(suite: Suite) -> list[SuiteProblem]:
    """Names (adapters, sizes, datasets, protocols), setting keys and values, duplicates."""
    from bench.backbones.adapter import AdapterError, get_adapter, list_adapters

    spec = suite.spec
    protocols = list(spec.protocols)
    problems: list[SuiteProblem] = _check_overrides(
        suite, ("protocols",), {p: suite.protocol_settings(p) for p in protocols}
    )
    problems += _version_problems(suite, protocols, names_ok=not problems)

    adapters = list_adapters()
    seen_models: dict[tuple, int] = {}
    for i, m in enumerate(spec.models):
        if m.adapter not in adapters:
            problems.append(suite.problem(
                ("models", i, "adapter"), unknown_name_message("adapter", m.adapter, adapters)
            ))
        size = m.size
        try:  # sizes are the adapter's own (DINOv2's g, a timm model's name)
            if m.adapter in adapters:
                size = get_adapter(m.adapter).canonical_size(m.size)
        except AdapterError as exc:
            problems.append(suite.problem(("models", i, "size"), str(exc)))
        key = (m.label, size)
        if key in seen_models:
            problems.append(suite.problem(
                ("models", i),
                f"model {m.label!r} size {m.size} is listed twice "
                f"(also models[{seen_models[key]}]); give one a different name",
            ))
        seen_models.setdefault(key, i)
        problems += _check_overrides(suite, ("models", i, "overrides"), m.overrides)

    datasets = _known_datasets()
    seen_data: dict[str, int] = {}
    for i, d in enumerate(spec.datasets):
        if d.name not in datasets:
            problems.append(suite.problem(
                ("datasets", i, "name"), unknown_name_message("dataset", d.name, datasets)
            ))
        if d.name in seen_data:
            problems.append(suite.problem(
                ("datasets", i), f"dataset {d.name!r} is listed twice "
                f"(also datasets[{seen_data[d.name]}])"
            ))
        seen_data.setdefault(d.name, i)
        problems += _check_overrides(suite, ("datasets", i, "overrides"), d.overrides)

    if len(set(spec.seeds)) != len(spec.seeds):
        problems.append(suite.problem(("seeds",), f"seeds repeat: {spec.seeds}"))
    if problems:  # settings of unknown names would only repeat the same errors
        return problems
    for p in protocols:
        for mi in range(len(spec.models)):
            for di in range(len(spec.datasets)):
                problems += _settings_problems(suite, mi, di, p)
    return list(dict.fromkeys(problems))  # one combination's error often repeats


def _version_problems(suite: Suite, protocols: list[str], names_ok: bool) -> list[SuiteProblem]:
    """Each protocol's version as the suite states it (``protocol_versions``, else
    ``protocol_version``) must be the one registered: a suite written for another version
    asks for numbers this code does not compute."""
    from bench.protocols.registry import find_protocol

    spec = suite.spec
    problems = [bad for p in spec.protocol_versions
                if (bad := _check_protocol_name(suite, ("protocol_versions", p), p))]
    if not names_ok or problems:
        return problems  # unknown names are reported once, where the suite lists them
    shared: list[str] = []  # protocols whose version protocol_version states, if wrong
    for p in protocols:
        declared = find_protocol(p)
        assert declared is not None  # names were checked
        stated = spec.protocol_versions.get(p, spec.protocol_version)
        if stated is None:
            problems.append(suite.problem(
                ("protocols", p),
                f"no version stated for protocol {p}; add protocol_version: "
                f'"{declared.version}" (every protocol) or protocol_versions: '
                f'{{{p}: "{declared.version}"}}',
            ))
        elif stated != declared.version and p in spec.protocol_versions:
            problems.append(suite.problem(
                ("protocol_versions", p),
                f"the suite was written for {p} version {stated!r}, this unip-bench "
                f"implements {declared.version!r}; check what changed and update it",
            ))
        elif stated != declared.version:
            shared.append(f"{p} {declared.version!r}")
    if shared:
        problems.append(suite.problem(
            ("protocol_version",),
            f"the suite was written for protocol version {spec.protocol_version!r}, this "
            f"unip-bench implements {', '.join(shared)}; check what changed and update it "
            "(protocol_versions: {name: version} states one protocol's)",
        ))
    return problems


def _check_overrides(suite: Suite, base: tuple, overrides: dict) -> list[SuiteProblem]:
    """Protocol names and setting keys of a ``{protocol: settings}`` mapping at ``base``."""
    problems = []
    for p, values in overrides.items():
        bad = _check_protocol_name(suite, base + (p,), p)
        if bad:
            problems.append(bad)
        else:
            problems += _check_setting_keys(suite, p, values or {}, base + (p,))
    return problems


# ---------------------------------------------------------------------------- disk checks
def check_files(
    suite: Suite,
    *,
    load_checkpoints: bool = True,
    full_data_check: bool = True,
    sha256_of: Callable[[Path], str] | None = None,
    log: Callable[[str], None] = lambda _msg: None,
) -> list[SuiteProblem]:
    """What ``unipbench validate`` adds: checkpoints exist, hash and load; dataset folders.

    Datasets marked ``synthetic`` whose folder does not exist yet are skipped (the runner
    generates them).
    """
    from bench.checkpoints.reader import sha256_file

    hash_fn = sha256_of or sha256_file
    problems: list[SuiteProblem] = []
    for i, m in enumerate(suite.spec.models):
        if m.checkpoint is None:
            continue
        where = ("models", i, "checkpoint")
        catalogue_problem = _catalogue_problem(m)
        if catalogue_problem is not None:
            if catalogue_problem:
                problems.append(suite.problem(where, catalogue_problem))
            elif load_checkpoints:
                problems += _load_problem(suite, i)
            continue
        if m.checkpoint.startswith(("http://", "https://")):
            log(f"models[{i}] {m.label}: URL checkpoint, checked when first downloaded")
            continue
        if m.checkpoint.startswith("hf://"):
            problems += _hub_problems(suite, i, load_checkpoints, log)
            continue
        path = Path(m.checkpoint).expanduser()
        if not path.exists():
            from bench.checkpoints.hints import missing_path_hint

            hint = missing_path_hint(m.adapter, m.size, m.label)
            problems.append(suite.problem(where, f"checkpoint {path} does not exist{hint}"))
            continue
        if m.sha256 and path.is_file():
            digest = hash_fn(path)
            if digest.lower() != m.sha256.lower():
                problems.append(suite.problem(
                    ("models", i, "sha256"),
                    f"checkpoint {path} has sha256 {digest}, the suite expects {m.sha256}",
                ))
                continue
        if load_checkpoints:
            problems += _load_problem(suite, i)
    for i, d in enumerate(suite.spec.datasets):
        root = Path(d.root).expanduser()
        if d.synthetic is not None and not root.exists():
            log(f"datasets[{i}] {d.name}: synthetic, generated at {root} on the first run")
            continue
        problems += _dataset_problems(suite, i, root, full_data_check)
    return problems


def _catalogue_problem(m: Any) -> str | None:
    """For a catalogue id (or a misspelt one): what is wrong ('' for nothing, e.g. fetched
    and pinned); None when the checkpoint is a path or URL."""
    from bench.checkpoints.catalogue import is_catalogue_id, unknown_id_message
    from bench.checkpoints.hints import suite_problem

    if is_catalogue_id(m.checkpoint):
        return suite_problem(m.checkpoint, m.sha256, m.adapter, m.size) or ""
    return unknown_id_message(m.checkpoint)


def _hub_problems(
    suite: Suite, i: int, load: bool, log: Callable[[str], None]
) -> list[SuiteProblem]:
    """An ``hf://`` checkpoint: well formed; loaded (fetched) when checkpoints are loaded;
    else present in the Hub cache, or fetched on first use unless HF_HUB_OFFLINE is set."""
    from bench.checkpoints.hub import HubError, hub_cached, hub_offline, parse_hub_path

    m = suite.spec.models[i]
    where = ("models", i, "checkpoint")
    try:
        hp = parse_hub_path(m.checkpoint)
    except HubError as exc:
        return [suite.problem(where, str(exc))]
    if load:
        return _load_problem(suite, i)
    if hub_cached(m.checkpoint):
        return []
    if hub_offline():
        return [suite.problem(where, (
            f"{hp} is not in the Hugging Face cache and HF_HUB_OFFLINE is set; fetch it "
            f"once online with `{hp.fetch_command()}`"
        ))]
    log(f"models[{i}] {m.label}: {hp} is not cached yet; fetched on first use")
    return []


def _load_problem(suite: Suite, i: int) -> list[SuiteProblem]:
    from bench.backbones.adapter import downstream_options, load_backbone

    m = suite.spec.models[i]
    try:
        # As the protocols will load it (a method's downstream options under the user's).
        options = downstream_options(m.adapter, m.options)
        load_backbone(m.adapter, m.size, m.checkpoint, sha256=m.sha256, **options)
    except (ValueError, KeyError, OSError) as exc:
        return [suite.problem(("models", i, "checkpoint"), f"does not load: {exc}")]
    return []


def _dataset_problems(suite: Suite, i: int, root: Path, full: bool) -> list[SuiteProblem]:
    from bench.data.check import check_dataset

    d = suite.spec.datasets[i]
    if not root.exists():
        return [suite.problem(("datasets", i, "root"), f"dataset folder {root} does not exist")]
    report = check_dataset(d.name, root, full=full)
    if report.ok:
        return []
    return [suite.problem(("datasets", i, "root"), f"{d.name}: {e}") for e in report.errors]
