"""`maet table`: comparison tables from run records and from the published numbers, never typed by hand.

A table holds the numbers of one protocol only. For our runs the protocol is the record's
`protocol` field (the pipeline names its suite, e.g. `synthetic`), else `<task> on <dataset>`:
runs on other data or with another recipe never share a table. Rows are inits, columns the
headline metrics (top-1 ft, top-1 lin, top-1 kNN, APbox, APmask, mIoU) per architecture; several seeds of one
cell are shown as mean ± std (n), and of several records of one seed only the latest counts. Each
metric gets a `Δ sup` column where a supervised row exists.
Published numbers come from `results/published/*.csv`, one table per file, each row with its recipe
and source; our rows never share a table with them. A published number is its recipe's: the paper's
scratch top-1 (82.3 / 82.6 / 83.1) is a ViT trained from scratch with P Table 11's recipe and its EMA,
not the MAE fine-tune recipe. So where the classification rows of one measured table were trained
with different recipes (the published pipelines' scratch row), a `recipe (ft)` / `recipe (lin)` column
prints each row's recipe, read from its records' config.
"""

from __future__ import annotations

import re
from pathlib import Path

import pandas as pd

from .records import read_records

# (task, metric key in the record) -> column title
HEADLINE = {("finetune", "top1"): "top-1 (ft)", ("linprobe", "top1"): "top-1 (lin)", ("knn", "top1"): "top-1 (kNN)",
            ("detection", "bbox_AP"): "APbox", ("detection", "segm_AP"): "APmask",
            ("segmentation", "mIoU"): "mIoU"}
COLUMN_TASK = {title: task for (task, _), title in HEADLINE.items()}
INIT_ORDER = ("scratch", "supervised", "mae")
DEFAULT_PUBLISHED = Path("results") / "published"
DEFAULT_OUT = Path("results") / "tables"
RECIPE_COLUMN = {"top-1 (ft)": "recipe (ft)", "top-1 (lin)": "recipe (lin)"}


def protocol_of(record: dict) -> str:
    return record.get("protocol") or f"{record['task']} on {record['dataset']}"


def latest_per_seed(records: list[dict]) -> list[dict]:
    """Keep the last record of each (protocol, task, dataset, init, arch, seed): a re-run replaces, seeds add up."""
    latest = {(protocol_of(r), r["task"], r["dataset"], r["init"], r["arch"], r.get("seed")): r for r in records}
    return list(latest.values())


def backbone_of(arch: str) -> str:
    """The encoder in a record's arch, so one table column holds a backbone across tasks:
    'vit_custom_w192_d6_patch8' (classifier), '..._vitdet_mask_rcnn', 'vit_w192_d6_patch8_upernet' ->
    'vit_w192_d6_patch8'; 'vit_base_patch16' stays."""
    match = re.search(r"vit_(?:custom_)?([a-z0-9_]*?_patch\d+)", arch)
    return f"vit_{match.group(1)}" if match else arch


def recipe_of(record: dict) -> str:
    """A classification run's recipe in a few words, from its record's config ('' where it holds none)."""
    c = record.get("config") or {}
    if record["task"] not in ("finetune", "linprobe") or "epochs" not in c:
        return ""
    lr = f"lr {c['lr']:g}" if c.get("lr") is not None else f"blr {c.get('blr', 0):g}"
    parts = [f"{c['epochs']} ep", lr, f"wd {c.get('weight_decay', 0):g}"]
    if record["task"] == "finetune":
        parts += [f"layer decay {c.get('layer_decay', 0.75):g}", f"β2 {c.get('beta2', 0.999):g}"]
        if c.get("model_ema"):
            parts.append(f"EMA {c.get('model_ema_decay', 0.9999):g} (its top-1)")
    return ", ".join(parts)


def measurements(records: list[dict]) -> pd.DataFrame:
    """One row per (record, headline metric): protocol, arch (the backbone), init, column, value, seed, run_id,
    recipe."""
    records = latest_per_seed(records)
    rows = [dict(protocol=protocol_of(r), arch=backbone_of(r["arch"]), init=r["init"], column=title,
                 value=float(r["metrics"][key]), seed=r.get("seed"), run_id=r["run_id"], recipe=recipe_of(r))
            for r in records for (task, key), title in HEADLINE.items()
            if r["task"] == task and key in r["metrics"]]
    return pd.DataFrame(rows, columns=["protocol", "arch", "init", "column", "value", "seed", "run_id", "recipe"])


def _init_key(init: pd.Index | pd.Series) -> pd.Index:
    """scratch, supervised, mae first (the comparison the suite is about), then the rest by name."""
    return pd.Index([f"{INIT_ORDER.index(i) if i in INIT_ORDER else len(INIT_ORDER)}{i}" for i in init])


def _cell(values: pd.Series) -> str:
    if len(values) == 1:
        return f"{values.iloc[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f} ({len(values)})"


def measured_table(frame: pd.DataFrame) -> pd.DataFrame:
    """Rows = init; columns = '<metric>' (and '<metric> Δ sup') per arch, for one protocol's measurements."""
    stats = frame.groupby(["init", "arch", "column"])["value"].agg(["mean", _cell])
    table = {}
    for (arch, column), group in stats.reset_index().groupby(["arch", "column"], sort=False):
        group = group.set_index("init")
        name = column if frame["arch"].nunique() == 1 else f"{column} [{arch}]"
        table[name] = group["_cell"]
        if "supervised" in group.index:
            table[f"{name} Δ sup"] = (group["mean"] - group.loc["supervised", "mean"]).map("{:+.2f}".format)
    order = [c for title in HEADLINE.values() for c in table if c.split(" [")[0].removesuffix(" Δ sup") == title]
    for column, title in RECIPE_COLUMN.items():  # only where the rows' recipes differ: like is not like
        recipes = frame[frame["column"] == column].groupby("init")["recipe"].agg(lambda r: "; ".join(sorted(set(r))))
        if recipes.nunique() > 1:
            table[title] = recipes.replace("", "–")
            order.append(title)
    out = pd.DataFrame(table)[order].fillna("–")
    return out.sort_index(key=_init_key).rename_axis("init")


def published_tables(folder: str | Path = DEFAULT_PUBLISHED) -> dict[str, pd.DataFrame]:
    """Protocol -> table (rows = init, columns = metric per arch, the recipe and the sources) from each CSV."""
    tables = {}
    for path in sorted(Path(folder).glob("*.csv")):
        frame = pd.read_csv(path, dtype={"value": str})
        (protocol,) = frame["protocol"].unique()  # one protocol per file (tests/test_published.py)
        keys = zip(frame["task"], frame["metric"], frame["arch"])
        frame["column"] = [f"{HEADLINE.get((task, metric), metric)} [{arch}]" for task, metric, arch in keys]
        table = frame.pivot_table(index="init", columns="column", values="value", aggfunc="first", sort=False)
        for label in ("recipe", "source"):
            table[label] = frame.groupby("init", sort=False)[label].agg(lambda s: "; ".join(dict.fromkeys(s)))
        tables[protocol] = table.fillna("–").sort_index(key=_init_key)
        tables[protocol].attrs["name"] = path.stem
    return tables


def to_markdown(table: pd.DataFrame) -> str:
    """A GitHub Markdown table (pandas' own needs the optional `tabulate`)."""
    head = [table.index.name or "", *map(str, table.columns)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(map(str, [index, *row])) + " |" for index, row in zip(table.index, table.values)]
    return "\n".join(lines)


def slug(protocol: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", protocol.lower()).strip("_")


def bar_charts(frame: pd.DataFrame, protocol: str, out: Path) -> list[Path]:
    """One PNG per task of this protocol: mean (± std where there are seeds) per init and metric."""
    from .plots import bar_chart

    paths = []
    for task, group in frame.groupby(frame["column"].map(COLUMN_TASK)):
        stats = group.groupby(["column", "init"])["value"].agg(["mean", "std"]).reset_index()
        stats = stats.iloc[_init_key(stats["init"]).argsort(kind="stable")]
        path = out / f"{slug(protocol)}__{task}.png"
        paths.append(bar_chart(stats, path, title=f"{protocol}: {task}"))
    return paths


def write_tables(records_dir=None, published=DEFAULT_PUBLISHED, out=DEFAULT_OUT, plots: bool = True,
                 records: list[dict] | None = None) -> str:
    """Write every table as Markdown + CSV (and the bar charts) under `out`; return the Markdown report.
    `records`: these instead of every record in `records_dir` (a pipeline's own runs)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    frame = measurements(read_records(records_dir) if records is None else records)
    sections = []
    for protocol, group in frame.groupby("protocol", sort=True):
        table = measured_table(group)
        runs = group["run_id"].nunique()
        seeds = sorted({int(s) for s in group["seed"].dropna()})
        backbones = ", ".join(sorted(group["arch"].unique()))
        text = (f"## {protocol} (measured)\n\n{to_markdown(table)}\n\n"
                f"From {runs} run records; seeds {seeds}; backbone {backbones}.")
        table.to_csv(out / f"{slug(protocol)}.csv")
        (out / f"{slug(protocol)}.md").write_text(text + "\n")
        if plots:
            bar_charts(group, protocol, out)
        sections.append(text)
    for protocol, table in published_tables(published).items():
        text = f"## {protocol} (published)\n\n{to_markdown(table)}"
        table.to_csv(out / f"published__{table.attrs['name']}.csv")
        (out / f"published__{table.attrs['name']}.md").write_text(text + "\n")
        sections.append(text)
    report = "\n\n".join(sections) + "\n"
    (out / "README.md").write_text("# Comparison tables\n\nWritten by `maet table` from `results/runs/*.jsonl` "
                                   f"and `{published}/*.csv`; do not edit by hand.\n\n" + report)
    return report
