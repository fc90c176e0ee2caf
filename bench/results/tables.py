"""Leaderboard tables from store records: Markdown, LaTeX or CSV.

Rows are method-size; a column group per protocol in the records, in the protocols'
declaration order (see :mod:`bench.protocols.registry`): its primary metric per dataset
and the average, or the best block of a ``per_layer`` protocol, the published averages
with our difference where the protocol names a ``reference_key``, then GFLOPs and
parameters. Values are mean ± std over seeds; the best value of each metric column is
marked, in the metric's direction. A protocol not registered here (a plug-in that is not
installed) is shown under its name, never dropped. Tables read only the store.
"""

from __future__ import annotations

import csv
import io
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.backbones.adapter import size_letter
from bench.protocols.registry import MIOU, Metric, find_protocol, ordered_protocols
from bench.protocols.registry import sort_protocol_names as _sort_protocols
from bench.results.store import RunRecord, latest_by_run

SIZE_ORDER = {"tiny": 0, "small": 1, "base": 2, "large": 3}
RANDOM_INIT_MARK = "†"
DEFAULT_REFERENCE = Path("results/reference/paper-figure2.yaml")


class MixedVersionsError(ValueError):
    """Records of different protocol versions would be compared in one table."""


class ConflictingRecordsError(ValueError):
    """Two runs (different configurations) would fill the same seed of the same cell."""


@dataclass
class Cell:
    """A value over seeds: mean, sample std (None for one seed) and the seeds' count."""

    mean: float | None
    std: float | None = None
    n: int = 0
    note: str = ""  # e.g. the best layer of a layer-wise probe

    @classmethod
    def of(cls, values: Sequence[float], note: str = "") -> Cell:
        if not values:
            return cls(None)
        std = statistics.stdev(values) if len(values) > 1 else None
        return cls(statistics.fmean(values), std, len(values), note)


@dataclass
class Column:
    key: str
    title: str
    kind: str  # "metric" (best marked), "ref", "diff", "gflops", "params"
    metric: Metric | None = None  # of "metric", "ref" and "diff" columns


@dataclass(frozen=True)
class ProtocolView:
    """How tables and plots show one protocol: from its declaration, or for a protocol
    not registered here, from its name and what its records hold."""

    name: str
    short: str
    title: str
    metric: Metric
    per_layer: bool = False
    reference_key: str | None = None
    registered: bool = True


def protocol_view(name: str, records: Sequence[RunRecord] = ()) -> ProtocolView:
    """The view of protocol ``name``; ``records`` (its own) decide an unregistered one's
    metric: mIoU when they report it, else their first numeric metric."""
    declared = find_protocol(name)
    if declared is not None:
        return ProtocolView(declared.name, declared.label, declared.title or declared.name,
                            declared.primary, declared.per_layer, declared.reference_key)
    metric = MIOU
    keys = [k for r in records for k, v in (r.metrics or {}).items()
            if isinstance(v, (int, float)) and not isinstance(v, bool)]
    if keys and MIOU.key not in keys:
        metric = Metric(keys[0], keys[0])
    return ProtocolView(name, name, name, metric, any(r.per_layer for r in records),
                        registered=False)


def protocol_views(records: Sequence[RunRecord]) -> list[ProtocolView]:
    """A view per protocol in ``records``: declaration order, unregistered ones last."""
    names = _sort_protocols(r.protocol for r in records)
    return [protocol_view(n, [r for r in records if r.protocol == n]) for n in names]


@dataclass
class Row:
    method: str
    size: str
    random_init: bool
    cells: dict[str, Cell] = field(default_factory=dict)
    cost_basis: tuple | None = None  # how its GFLOPs were counted, for the notes
    adapter: str | None = None  # whose sizes ``size`` is one of (its letter in tables)

    @property
    def letter(self) -> str:
        return size_letter(self.size, self.adapter)

    @property
    def label(self) -> str:
        mark = f" {RANDOM_INIT_MARK}" if self.random_init else ""
        return f"{self.method}-{self.letter}{mark}"


@dataclass
class Leaderboard:
    columns: list[Column]
    rows: list[Row]
    notes: list[str]
    title: str = ""


# ---------------------------------------------------------------------------- inputs
def load_reference(path: str | Path | None = None) -> dict[str, Any] | None:
    """Published numbers (``results/reference/paper-figure2.yaml``); None if absent."""
    from bench.results.provenance import REPO_ROOT

    candidates = [Path(path)] if path else [DEFAULT_REFERENCE, REPO_ROOT / DEFAULT_REFERENCE]
    for p in candidates:
        if p.is_file():
            with open(p, encoding="utf-8") as f:
                return yaml.safe_load(f)
    if path:
        raise FileNotFoundError(f"reference file {path} does not exist")
    return None


def _dataset_key(name: str) -> str:
    from bench.protocols.config import dataset_key

    return dataset_key(name)


def _value(metrics: dict[str, Any] | None, key: str = MIOU.key) -> float | None:
    if not metrics:
        return None
    v = metrics.get(key, metrics.get("miou") if key == MIOU.key else None)
    return None if v is None else float(v)


def layer_curve(per_layer: Any, key: str = MIOU.key) -> list[tuple[int, float]]:
    """(zero-based block, metric ``key``) pairs from a per-layer result, in block order."""
    if not per_layer:
        return []
    items: Iterable[tuple[Any, Any]]
    if isinstance(per_layer, dict):
        items = per_layer.items()
    else:
        items = ((e.get("layer", i), e) for i, e in enumerate(per_layer))
    out = []
    for layer, entry in items:
        value = _value(entry if isinstance(entry, dict) else {key: entry}, key)
        if value is not None:
            out.append((int(layer), value))
    return sorted(out)


def select_records(
    records: Iterable[RunRecord],
    *,
    suite: str | None = None,
    run_ids: set[str] | None = None,
    allow_mixed_versions: bool = False,
) -> list[RunRecord]:
    """The done records that count (latest per run), filtered to a suite or run-id set."""
    latest = latest_by_run(records).values()
    chosen = [
        r for r in latest
        if r.status == "done"
        and (suite is None or r.suite == suite)
        and (run_ids is None or r.run_id in run_ids)
    ]
    # Each protocol has its own version: only one protocol's versions must agree.
    mixed = {p: v for p, v in _versions(chosen).items() if len(v) > 1}
    if mixed and not allow_mixed_versions:
        what = "; ".join(f"{p} records from protocol versions {', '.join(v)}"
                         for p, v in mixed.items())
        raise MixedVersionsError(
            f"the selected records mix versions: {what}; numbers of different versions of "
            "a protocol are not comparable. Select one suite (--suite) or pass "
            "--allow-mixed-versions to put them in one table anyway."
        )
    _refuse_conflicts(chosen)
    return chosen


def _versions(records: Sequence[RunRecord]) -> dict[str, list[str]]:
    """Protocol -> its versions in ``records`` (sorted), protocols in declaration order."""
    out: dict[str, list[str]] = {}
    for p in _sort_protocols(r.protocol for r in records):
        out[p] = sorted({r.protocol_version for r in records if r.protocol == p})
    return out


def _refuse_conflicts(records: Sequence[RunRecord]) -> None:
    """One record per (method, size, protocol, dataset, seed, version): two run ids there
    (a changed hyperparameter, checkpoint or dataset root) would be averaged as if they
    were two seeds."""
    seen: dict[tuple, RunRecord] = {}
    clashes: list[tuple[RunRecord, RunRecord]] = []
    for r in records:
        key = (r.model_name, r.size, r.protocol, r.dataset, r.seed, r.protocol_version)
        if key in seen:
            clashes.append((seen[key], r))
        else:
            seen[key] = r
    if not clashes:
        return
    lines = [
        f"{a.model_name}-{size_letter(a.size, a.adapter)} {a.dataset} {a.protocol} "
        f"seed {a.seed}: runs {a.run_id} (suite {a.suite}) and {b.run_id} (suite {b.suite})"
        for a, b in clashes[:3]
    ]
    more = f" and {len(clashes) - 3} more" if len(clashes) > 3 else ""
    raise ConflictingRecordsError(
        "different runs of the same method, dataset, protocol and seed would be averaged "
        "together: " + "; ".join(lines) + more + ". They differ in configuration "
        "(settings, checkpoint or data); select the runs of one suite file with "
        "--suite <file.yaml>, or rename one model (name:) to keep both."
    )


# ---------------------------------------------------------------------------- building
def _method_order(reference: dict | None) -> dict[str, int]:
    """Methods in the order the published tables of the declared protocols list them."""
    order: dict[str, int] = {}
    for p in ordered_protocols():
        for m in ((reference or {}).get(p.reference_key or "", {}) or {}):
            order.setdefault(m, len(order))
    return order


def build_leaderboard(
    records: Sequence[RunRecord],
    reference: dict[str, Any] | None = None,
    title: str = "",
) -> Leaderboard:
    """Aggregate done records into rows (method-size) and columns; see the module doc."""
    datasets = list(dict.fromkeys(r.dataset for r in records))
    views = protocol_views(records)
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.model_name, r.size), []).append(r)

    ref_datasets = [_dataset_key(d) for d in (reference or {}).get("datasets", [])]
    comparable = bool(reference) and sorted(map(_dataset_key, datasets)) == sorted(ref_datasets)

    def published(v: ProtocolView) -> bool:
        return comparable and v.reference_key is not None and v.reference_key in reference

    columns: list[Column] = []
    for v in views:
        if v.per_layer:
            columns += [Column(f"{v.name}:{d}", f"{v.short} best {d}", "metric", v.metric)
                        for d in datasets]
            continue
        columns += [Column(f"{v.name}:{d}", f"{v.short} {d}", "metric", v.metric)
                    for d in datasets]
        if len(datasets) > 1:
            columns.append(Column(f"{v.name}:avg", f"{v.short} avg", "metric", v.metric))
        if published(v):
            columns.append(Column(f"{v.name}:ref", f"{v.short} paper", "ref", v.metric))
            columns.append(Column(f"{v.name}:diff", f"{v.short} Δ", "diff", v.metric))
    columns += [Column("gflops", "GFLOPs", "gflops"), Column("params", "Params (M)", "params")]

    rows = []
    for (method, size), recs in groups.items():
        row = Row(method, size, random_init=any(r.random_init for r in recs),
                  adapter=recs[0].adapter)
        for v in views:
            _fill_protocol(row, v, [r for r in recs if r.protocol == v.name], datasets)
            # A random-init row is not the published model: no paper value beside it.
            if published(v) and not v.per_layer and not row.random_init:
                _fill_reference(row, v, reference)  # type: ignore[arg-type]
        _fill_cost(row, recs)
        rows.append(row)
    order = _method_order(reference)
    rows.sort(key=lambda r: (order.get(r.method, len(order)), r.method, SIZE_ORDER.get(r.size, 9)))
    notes = _notes(records, rows, views, reference, comparable)
    return Leaderboard(columns, rows, notes, title)


def _best_block(curve: list[tuple[int, float]], metric: Metric) -> tuple[int, float]:
    pick = max if metric.higher_is_better else min
    return pick(curve, key=lambda lv: lv[1])


def _fill_protocol(row: Row, v: ProtocolView, recs: list[RunRecord], datasets: list[str]) -> None:
    per_seed: dict[int, dict[str, float]] = {}
    for d in datasets:
        values, notes = [], []
        for r in recs:
            if r.dataset != d:
                continue
            if v.per_layer:
                curve = layer_curve(r.per_layer, v.metric.key)
                if not curve:
                    continue
                layer, value = _best_block(curve, v.metric)
                notes.append(layer + 1)
            else:
                value = _value(r.metrics, v.metric.key)
                if value is None:
                    continue
            values.append(value)
            per_seed.setdefault(r.seed, {})[d] = value
        note = ""
        if notes:  # the best block, 1-based, as most common over seeds
            note = f"L{statistics.mode(notes)}"
        row.cells[f"{v.name}:{d}"] = Cell.of(values, note)
    if not v.per_layer and len(datasets) > 1:
        means = [row.cells[f"{v.name}:{d}"].mean for d in datasets]
        if all(m is not None for m in means):
            complete = [s for s in per_seed.values() if len(s) == len(datasets)]
            std = (
                statistics.stdev([statistics.fmean(s.values()) for s in complete])
                if len(complete) > 1 else None
            )
            n = min(row.cells[f"{v.name}:{d}"].n for d in datasets)
            row.cells[f"{v.name}:avg"] = Cell(statistics.fmean(means), std, n)  # type: ignore[arg-type]


def _fill_reference(row: Row, v: ProtocolView, reference: dict[str, Any]) -> None:
    table = reference.get(v.reference_key or "", {}) or {}
    published = (table.get(row.method.lower()) or {}).get(row.letter)
    if published is None:
        return
    row.cells[f"{v.name}:ref"] = Cell(float(published), None, 1)
    ours = row.cells.get(f"{v.name}:avg") or Cell(None)
    if ours.mean is not None:
        row.cells[f"{v.name}:diff"] = Cell(ours.mean - float(published), None, 1)


def _fill_cost(row: Row, recs: list[RunRecord]) -> None:
    """FLOPs of the model of the first declared protocol that has a count (the paper's
    fine-tuning: backbone + decode head) when there is one."""
    rank = {n: i for i, n in enumerate(_sort_protocols(r.protocol for r in recs))}
    by_pref = sorted((r for r in recs if r.flops is not None), key=lambda r: rank[r.protocol])
    if not by_pref:
        return
    f = by_pref[0].flops
    assert f is not None
    row.cells["gflops"] = Cell(f.total_gmacs, None, 1)
    row.cost_basis = (
        by_pref[0].protocol, tuple(f.input_size), f.counter, f.convention,
        f.attention_matmuls_included,
    )
    params = f.backbone_params_m if f.backbone_params_m is not None else f.params_m
    row.cells["params"] = Cell(params, None, 1)


def _notes(
    records: Sequence[RunRecord], rows: list[Row], views: list[ProtocolView],
    reference: dict | None, comparable: bool,
) -> list[str]:
    notes = []
    seeds = sorted({r.seed for r in records})
    labels = list(dict.fromkeys(v.metric.label for v in views))
    what = labels[0] if len(labels) == 1 else "; ".join(
        f"{v.short} {v.metric.label}" for v in views)
    notes.append(
        f"{what} as mean ± std over seeds {seeds}" if len(seeds) > 1
        else f"{what}, seed {seeds[0]}" if seeds else "no results"
    )
    shorts = {v.name: v.short for v in views}
    for proto, size, counter, conv, attn in sorted({r.cost_basis for r in rows if r.cost_basis}):
        notes.append(
            f"GFLOPs: 10^9 {conv} of backbone + decode head of the {shorts[proto]} model "
            f"at {size[0]}x{size[1]}, {'with' if attn else 'without'} attention matmuls "
            f"({counter}); Params: backbone, millions"
        )
    if any(r.random_init for r in rows):
        notes.append(f"{RANDOM_INIT_MARK} random-init backbone (no pre-trained checkpoint)")
    for v in views:
        if not v.registered:
            notes.append(f"{v.name}: a protocol not registered here (its plug-in is not "
                         f"installed); shown with its {v.metric.key}")
    versions = _versions(records)
    distinct = sorted({x for vs in versions.values() for x in vs})
    if all(vs == distinct for vs in versions.values()):
        notes.append(f"protocol version {', '.join(distinct)}")
    else:
        notes.append("protocol versions: " + "; ".join(
            f"{shorts.get(p, p)} {', '.join(vs)}" for p, vs in versions.items()))
    if reference and comparable:
        notes.append(f"paper: {reference.get('source', 'published values')}; Δ = ours - paper")
    elif reference:
        notes.append(
            "paper values not shown: they average "
            f"{', '.join(reference.get('datasets', []))}, these results do not"
        )
    return notes


# ---------------------------------------------------------------------------- rendering
def _best(lb: Leaderboard) -> dict[str, float]:
    """Column key -> its best mean, in the direction of the column's metric."""
    best = {}
    for c in lb.columns:
        if c.kind != "metric":
            continue
        values = [r.cells[c.key].mean for r in lb.rows if c.key in r.cells]
        values = [v for v in values if v is not None]
        if values:
            higher = c.metric is None or c.metric.higher_is_better
            best[c.key] = max(values) if higher else min(values)
    return best


def _fmt(cell: Cell | None, column: Column, fmt: str) -> str:
    if cell is None or cell.mean is None:
        return "–" if fmt != "latex" else "--"
    digits = column.metric.digits if column.metric is not None else 1
    if column.kind == "diff":
        text = (f"{cell.mean:+.{digits}f}" if round(cell.mean, digits) != 0
                else f"{0:.{digits}f}")
    elif column.kind in ("gflops", "params"):
        text = f"{cell.mean:.2f}" if cell.mean < 10 else f"{cell.mean:.1f}"
    else:
        text = f"{cell.mean:.{digits}f}"
    if cell.std is not None:
        std = f"{cell.std:.{digits}f}"
        text += f" $\\pm$ {std}" if fmt == "latex" else f" ± {std}"
    if cell.note:
        text += f" ({cell.note})"
    return text


def render(lb: Leaderboard, fmt: str = "md") -> str:
    """The table as Markdown (``md``), LaTeX (``latex``) or ``csv``."""
    if fmt == "csv":
        return _render_csv(lb)
    if fmt not in ("md", "latex"):
        raise ValueError(f"unknown table format {fmt!r}; use md, latex or csv")
    from tabulate import tabulate

    best = _best(lb)
    body = []
    for r in lb.rows:
        label = r.label
        if fmt == "latex":
            label = label.replace("_", r"\_").replace(RANDOM_INIT_MARK, r"$^\dagger$")
        line = [label]
        for c in lb.columns:
            cell = r.cells.get(c.key)
            text = _fmt(cell, c, fmt)
            is_best = cell is not None and cell.mean is not None and best.get(c.key) == cell.mean
            if is_best and len(lb.rows) > 1:
                text = f"\\textbf{{{text}}}" if fmt == "latex" else f"**{text}**"
            line.append(text)
        body.append(line)
    headers = ["method"] + [c.title for c in lb.columns]
    align = ("left",) + ("right",) * len(lb.columns)
    if fmt == "latex":
        headers = [h.replace("Δ", r"$\Delta$").replace("_", r"\_") for h in headers]
        table = tabulate(body, headers, tablefmt="latex_raw", disable_numparse=True,
                         colalign=align)
        notes = "\n".join(f"% {n}".replace(RANDOM_INIT_MARK, "dagger:") for n in lb.notes)
        return f"{notes}\n{table}\n"
    table = tabulate(body, headers, tablefmt="pipe", disable_numparse=True, colalign=align)
    title = f"### {lb.title}\n\n" if lb.title else ""
    notes = "\n".join(f"- {n}" for n in lb.notes)
    return f"{title}{table}\n\n{notes}\n"


def _render_csv(lb: Leaderboard) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    header = ["method", "size", "random_init"]
    for c in lb.columns:
        header += [c.key, f"{c.key}:std", f"{c.key}:n"] if c.kind == "metric" else [c.key]
    w.writerow(header)
    for r in lb.rows:
        line: list[Any] = [r.method, r.letter, int(r.random_init)]
        for c in lb.columns:
            cell = r.cells.get(c.key) or Cell(None)
            line.append("" if cell.mean is None else round(cell.mean, 4))
            if c.kind == "metric":
                line += ["" if cell.std is None else round(cell.std, 4), cell.n or ""]
        w.writerow(line)
    return buf.getvalue()
