"""Leaderboard tables from store records: Markdown, LaTeX or CSV.

Rows are method-size; columns the fine-tuning (FT) and linear-probing (LP) mIoU per
dataset and their averages, layer-wise probing's best layer (LW) where present, the
published averages with our difference, GFLOPs and parameters. Values are mean ± std over
seeds; the best value of each mIoU column is marked. Tables read only the store.
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

from bench.adapter import size_letter
from bench.store import RunRecord, latest_by_run

PROTOCOL_SHORT = {"fine_tune": "FT", "linear_probe": "LP", "layerwise_probe": "LW"}
REFERENCE_KEYS = {"fine_tune": "fine_tuning", "linear_probe": "linear_probing"}
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
    kind: str  # "miou" (best marked), "ref", "diff", "gflops", "params"


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
    from bench.provenance import REPO_ROOT

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


def _miou(metrics: dict[str, Any] | None) -> float | None:
    if not metrics:
        return None
    v = metrics.get("mIoU", metrics.get("miou"))
    return None if v is None else float(v)


def layer_curve(per_layer: Any) -> list[tuple[int, float]]:
    """(zero-based block, mIoU) pairs from a layer-wise result, in block order."""
    if not per_layer:
        return []
    items: Iterable[tuple[Any, Any]]
    if isinstance(per_layer, dict):
        items = per_layer.items()
    else:
        items = ((e.get("layer", i), e) for i, e in enumerate(per_layer))
    out = []
    for layer, entry in items:
        value = _miou(entry if isinstance(entry, dict) else {"mIoU": entry})
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
    versions = sorted({r.protocol_version for r in chosen})
    if len(versions) > 1 and not allow_mixed_versions:
        raise MixedVersionsError(
            f"the selected records come from protocol versions {', '.join(versions)}; numbers "
            "of different versions are not comparable. Select one suite (--suite) or pass "
            "--allow-mixed-versions to put them in one table anyway."
        )
    _refuse_conflicts(chosen)
    return chosen


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
    order: dict[str, int] = {}
    for section in ("fine_tuning", "linear_probing"):
        for m in (reference or {}).get(section, {}) or {}:
            order.setdefault(m, len(order))
    return order


def build_leaderboard(
    records: Sequence[RunRecord],
    reference: dict[str, Any] | None = None,
    title: str = "",
) -> Leaderboard:
    """Aggregate done records into rows (method-size) and columns; see the module doc."""
    datasets = list(dict.fromkeys(r.dataset for r in records))
    protocols = [p for p in PROTOCOL_SHORT if any(r.protocol == p for r in records)]
    groups: dict[tuple[str, str], list[RunRecord]] = {}
    for r in records:
        groups.setdefault((r.model_name, r.size), []).append(r)

    ref_datasets = [_dataset_key(d) for d in (reference or {}).get("datasets", [])]
    comparable = bool(reference) and sorted(map(_dataset_key, datasets)) == sorted(ref_datasets)

    columns: list[Column] = []
    for p in protocols:
        short = PROTOCOL_SHORT[p]
        if p == "layerwise_probe":
            columns += [Column(f"{p}:{d}", f"{short} best {d}", "miou") for d in datasets]
            continue
        columns += [Column(f"{p}:{d}", f"{short} {d}", "miou") for d in datasets]
        if len(datasets) > 1:
            columns.append(Column(f"{p}:avg", f"{short} avg", "miou"))
        if comparable and REFERENCE_KEYS.get(p) in reference:  # type: ignore[operator]
            columns.append(Column(f"{p}:ref", f"{short} paper", "ref"))
            columns.append(Column(f"{p}:diff", f"{short} Δ", "diff"))
    columns += [Column("gflops", "GFLOPs", "gflops"), Column("params", "Params (M)", "params")]

    rows = []
    for (method, size), recs in groups.items():
        row = Row(method, size, random_init=any(r.random_init for r in recs),
                  adapter=recs[0].adapter)
        for p in protocols:
            _fill_protocol(row, p, [r for r in recs if r.protocol == p], datasets)
            # A random-init row is not the published model: no paper value beside it.
            if comparable and p in REFERENCE_KEYS and not row.random_init:
                _fill_reference(row, p, reference)  # type: ignore[arg-type]
        _fill_cost(row, recs)
        rows.append(row)
    order = _method_order(reference)
    rows.sort(key=lambda r: (order.get(r.method, len(order)), r.method, SIZE_ORDER.get(r.size, 9)))
    notes = _notes(records, rows, reference, comparable)
    return Leaderboard(columns, rows, notes, title)


def _fill_protocol(row: Row, p: str, recs: list[RunRecord], datasets: list[str]) -> None:
    per_seed: dict[int, dict[str, float]] = {}
    for d in datasets:
        values, notes = [], []
        for r in recs:
            if r.dataset != d:
                continue
            if p == "layerwise_probe":
                curve = layer_curve(r.per_layer)
                if not curve:
                    continue
                layer, v = max(curve, key=lambda lv: lv[1])
                notes.append(layer + 1)
            else:
                v = _miou(r.metrics)
                if v is None:
                    continue
            values.append(v)
            per_seed.setdefault(r.seed, {})[d] = v
        note = ""
        if notes:  # the best block, 1-based, as most common over seeds
            note = f"L{statistics.mode(notes)}"
        row.cells[f"{p}:{d}"] = Cell.of(values, note)
    if p != "layerwise_probe" and len(datasets) > 1:
        means = [row.cells[f"{p}:{d}"].mean for d in datasets]
        if all(m is not None for m in means):
            complete = [s for s in per_seed.values() if len(s) == len(datasets)]
            std = (
                statistics.stdev([statistics.fmean(s.values()) for s in complete])
                if len(complete) > 1 else None
            )
            n = min(row.cells[f"{p}:{d}"].n for d in datasets)
            row.cells[f"{p}:avg"] = Cell(statistics.fmean(means), std, n)  # type: ignore[arg-type]


def _fill_reference(row: Row, p: str, reference: dict[str, Any]) -> None:
    table = reference.get(REFERENCE_KEYS[p], {}) or {}
    published = (table.get(row.method.lower()) or {}).get(row.letter)
    if published is None:
        return
    row.cells[f"{p}:ref"] = Cell(float(published), None, 1)
    ours = row.cells.get(f"{p}:avg") or Cell(None)
    if ours.mean is not None:
        row.cells[f"{p}:diff"] = Cell(ours.mean - float(published), None, 1)


def _fill_cost(row: Row, recs: list[RunRecord]) -> None:
    """FLOPs of the fine-tuning model (backbone + decode head) when there is one."""
    by_pref = sorted(
        (r for r in recs if r.flops is not None),
        key=lambda r: list(PROTOCOL_SHORT).index(r.protocol) if r.protocol in PROTOCOL_SHORT else 9,
    )
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
    records: Sequence[RunRecord], rows: list[Row], reference: dict | None, comparable: bool
) -> list[str]:
    notes = []
    seeds = sorted({r.seed for r in records})
    notes.append(
        f"mIoU (%) as mean ± std over seeds {seeds}" if len(seeds) > 1
        else f"mIoU (%), seed {seeds[0]}" if seeds else "no results"
    )
    for proto, size, counter, conv, attn in sorted({r.cost_basis for r in rows if r.cost_basis}):
        notes.append(
            f"GFLOPs: 10^9 {conv} of backbone + decode head of the {PROTOCOL_SHORT[proto]} model "
            f"at {size[0]}x{size[1]}, {'with' if attn else 'without'} attention matmuls "
            f"({counter}); Params: backbone, millions"
        )
    if any(r.random_init for r in rows):
        notes.append(f"{RANDOM_INIT_MARK} random-init backbone (no pre-trained checkpoint)")
    versions = sorted({r.protocol_version for r in records})
    notes.append(f"protocol version {', '.join(versions)}")
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
    best = {}
    for c in lb.columns:
        if c.kind != "miou":
            continue
        values = [r.cells[c.key].mean for r in lb.rows if c.key in r.cells]
        values = [v for v in values if v is not None]
        if values:
            best[c.key] = max(values)
    return best


def _fmt(cell: Cell | None, kind: str, fmt: str) -> str:
    if cell is None or cell.mean is None:
        return "–" if fmt != "latex" else "--"
    if kind == "diff":
        text = f"{cell.mean:+.1f}" if round(cell.mean, 1) != 0 else "0.0"
    elif kind in ("gflops", "params"):
        text = f"{cell.mean:.2f}" if cell.mean < 10 else f"{cell.mean:.1f}"
    else:
        text = f"{cell.mean:.1f}"
    if cell.std is not None:
        text += f" $\\pm$ {cell.std:.1f}" if fmt == "latex" else f" ± {cell.std:.1f}"
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
            text = _fmt(cell, c.kind, fmt)
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
        header += [c.key, f"{c.key}:std", f"{c.key}:n"] if c.kind == "miou" else [c.key]
    w.writerow(header)
    for r in lb.rows:
        line: list[Any] = [r.method, r.letter, int(r.random_init)]
        for c in lb.columns:
            cell = r.cells.get(c.key) or Cell(None)
            line.append("" if cell.mean is None else round(cell.mean, 4))
            if c.kind == "miou":
                line += ["" if cell.std is None else round(cell.std, 4), cell.n or ""]
        w.writerow(line)
    return buf.getvalue()
