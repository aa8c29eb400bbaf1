"""The GPU check's JSON (`scripts/gpu_check.sh`): the figures of every step, assembled into one file.

    python scripts/gpu_summary.py summarize --steps DIR --out OUT/gpu_check.json [--run RUN] [--pair IN:OUT]
    python scripts/gpu_summary.py info --out DIR/info.json --device cuda     (the machine: needs torch)

`summarize` reads only files (the standard library and oodbench's run record; no torch), so it runs
after every step, a failed one too, and whatever is missing is `null` with the step's state beside it.
It reads, in the steps folder `DIR`:

    plan.tsv                      the steps in order: name, time limit (s), command (gpu_check.sh writes it)
    <step>.status                 {"rc", "seconds", "limit_s", "state"} once the step has run or was skipped
    <step>.log                    its output (the tail of a failed step's log goes into the JSON)
    info.json, nvidia-smi.csv     the machine (the `info` step)
    pytest_gpu.xml                the tests marked gpu (JUnit XML)
    bench_<size>_<precision>.json scripts/bench.py's output, sizes bench and paper, precisions 32-true and bf16-mixed

and, in the run folder `RUN` the `train` step made: trained.json, config.yaml, logs/metrics.csv and
eval/<in>_vs_<out>/metrics.json (the `evaluate` step's); in the run the `import` step made (`--imported-run`),
its evaluation's metrics.json, summarised the same way under "import".

The projection: hours to train the paper's Glow for 250 epochs on CIFAR-10's full 50,000-image training
split, epochs x 50,000 / (measured images/s) / 3600, from each measured rate: the 3-minute `oodbench
train` (images trained per second of its wall time, validation and checkpoints included) and
`scripts/bench.py --size paper` (training steps alone) in fp32 and bf16-mixed. Only 8,068 CIFAR-10
training images are staged (../shared/data/README.md), so the 3-minute run trains on fewer.
"""

from __future__ import annotations

import argparse
import csv
import datetime
import json
import math
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

PAPER_EPOCHS = 250  # Glow's CIFAR-10 schedule to project (Kingma & Dhariwal 2018 trained for longer; 250 is the task's)
CIFAR10_TRAIN_IMAGES = 50_000  # the full training split
STAGED_CIFAR10_TRAIN_IMAGES = 8_068  # what ../shared/data holds of it (its README.md)
SIZES = ("bench", "paper")
PRECISIONS = ("32-true", "bf16-mixed")
TAIL_CHARS = 3000  # of a failed step's log, in the JSON
TIMED_OUT = (124, 137)  # timeout's exit codes: SIGTERM sent, or SIGKILL after it was ignored


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tail(path: Path, chars: int = TAIL_CHARS) -> str | None:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return None
    return text[-chars:]


def _finite(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# ---- the steps ----------------------------------------------------------------------------------------

def read_plan(steps: Path) -> list[dict[str, Any]]:
    """plan.tsv: one step a line, `name<TAB>limit_s<TAB>command`, in the order they run."""
    plan = []
    try:
        lines = (steps / "plan.tsv").read_text().splitlines()
    except OSError:
        return plan
    for line in lines:
        name, _, rest = line.partition("\t")
        limit, _, command = rest.partition("\t")
        if name:
            plan.append({"step": name, "limit_s": int(limit) if limit.isdigit() else None, "command": command})
    return plan


def step_states(steps: Path) -> list[dict[str, Any]]:
    """Each planned step with its state: ok, failed, timed_out, skipped, or not_run (yet)."""
    rows = []
    for planned in read_plan(steps):
        name = planned["step"]
        status = _read_json(steps / f"{name}.status") or {}
        rc = status.get("rc")
        if not status:
            state = "not_run"
        elif status.get("state") == "skipped":
            state = "skipped"
        elif rc == 0:
            state = "ok"
        else:
            state = "timed_out" if rc in TIMED_OUT else "failed"
        row = {**planned, "state": state, "rc": rc, "seconds": status.get("seconds"),
               "limit_s": status.get("limit_s", planned["limit_s"]), "log": f"steps/{name}.log"}
        if status.get("reason"):
            row["reason"] = status["reason"]
        if state in ("failed", "timed_out"):
            row["log_tail"] = _tail(steps / f"{name}.log")
        rows.append(row)
    return rows


# ---- the figures --------------------------------------------------------------------------------------

def machine(steps: Path) -> dict[str, Any] | None:
    info = _read_json(steps / "info.json")
    smi = None
    try:
        first = (steps / "nvidia-smi.csv").read_text().strip().splitlines()
    except OSError:
        first = []
    if first:
        fields = [part.strip() for part in first[0].split(",")]
        if len(fields) == 3:
            smi = {"name": fields[0], "memory_total_mib": _finite(fields[1]), "driver_version": fields[2],
                   "gpus": len(first)}
    if info is None and smi is None:
        return None
    return {"nvidia_smi": smi, **(info or {})}


def pytest_counts(steps: Path) -> dict[str, Any] | None:
    """Passed, failed, errors, skipped of the JUnit XML, and the names of those that did not pass."""
    try:
        root = ET.parse(steps / "pytest_gpu.xml").getroot()
    except (OSError, ET.ParseError):
        return None
    counts = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0}
    not_passed, skip_reasons = [], set()
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        if case.find("failure") is not None:
            counts["failed"] += 1
            not_passed.append(name)
        elif case.find("error") is not None:
            counts["errors"] += 1
            not_passed.append(name)
        elif (skipped := case.find("skipped")) is not None:
            counts["skipped"] += 1
            skip_reasons.add(skipped.get("message", ""))
        else:
            counts["passed"] += 1
    return {**counts, "total": sum(counts.values()), "not_passed": not_passed, "skip_reasons": sorted(skip_reasons)}


def _family_figures(result: dict[str, Any]) -> dict[str, Any]:
    train, evaluation = result.get("train", {}), result.get("eval", {})
    best = evaluation.get("inference_mode", {}).get("best", {})
    return {
        "parameters": result.get("parameters"),
        "train_batch_size": train.get("batch_size"),
        "train_images_per_s": train.get("images_per_s"),
        "train_cuda_peak_mib": train.get("cuda_peak_mib"),
        "train_gflop_per_image": train.get("gflop_per_image"),
        "train_final_loss_bpd": train.get("final_loss_bpd"),
        "eval_batch_size": best.get("batch_size"),
        "eval_images_per_s": best.get("images_per_s"),
        "eval_cuda_peak_mib": best.get("cuda_peak_mib"),
        "eval_tf32_max_abs_bpd_difference": evaluation.get("tf32", {}).get("max_abs_bpd_difference"),
    }


def bench(steps: Path) -> dict[str, Any]:
    """Per size and training precision: each family's images/s and peak GPU memory (MiB), training and
    evaluation (evaluation always float32); the whole bench.py JSON is in the steps folder."""
    figures: dict[str, Any] = {}
    for size in SIZES:
        for precision in PRECISIONS:
            name = f"bench_{size}_{precision}.json"
            report = _read_json(steps / name)
            if report is None:
                figures.setdefault(size, {})[precision] = None
                continue
            figures.setdefault(size, {})[precision] = {
                "file": f"steps/{name}", "complete": report.get("complete"), "device_name": report.get("device_name"),
                "cuda_tf32": report.get("cuda_tf32"),
                "roofline_gflops": {k: v.get("gflops") for k, v in report.get("roofline", {}).get("peaks", {}).items()},
                "families": {family: _family_figures(result) for family, result in report.get("families", {}).items()},
            }
    return figures


def _run_record(run: Path) -> dict[str, Any] | None:
    """config.yaml through oodbench's own reader (schema.RunRecord), as plain values."""
    try:
        from oodbench.schema import RunRecord

        record = RunRecord.read(run / "config.yaml")
    except Exception:  # noqa: BLE001 - no run, or oodbench not importable: the figure is null
        return None
    return {"n_train": record.n_train, "n_val": record.n_val, "train": dict(record.train),
            "model_settings": dict(record.model_settings), "versions": dict(record.versions)}


def _epoch_rows(run: Path) -> list[dict[str, str]]:
    try:
        with open(run / "logs" / "metrics.csv", newline="") as handle:
            return list(csv.DictReader(handle))
    except OSError:
        return []


def train_figures(run: Path | None) -> dict[str, Any] | None:
    """Steps, epochs and images/s of the time-bound training run, and its best validation bits/dim."""
    if run is None:
        return None
    done = _read_json(run / "trained.json")
    record = _run_record(run)
    rows = _epoch_rows(run)
    if done is None and record is None and not rows:
        return None
    batch = (record or {}).get("train", {}).get("batch_size")
    figures: dict[str, Any] = {"run": str(run), "finished": done is not None}
    if record is not None:
        figures.update(n_train=record["n_train"], n_val=record["n_val"], batch_size=batch,
                       precision=record["train"].get("precision"), max_minutes=record["train"].get("max_minutes"),
                       accelerator=record["train"].get("accelerator"), devices=record["train"].get("devices"),
                       model_settings=record["model_settings"], versions=record["versions"])
    if done is not None:
        steps, seconds = int(done.get("steps", 0)), _finite(done.get("seconds"))
        figures.update(epochs=done.get("epochs"), partial_steps=done.get("partial_steps"), steps=steps,
                       seconds=seconds, val_bpd=_finite(done.get("val_bpd")))
        if batch and seconds:
            figures["images_per_s"] = steps * batch / seconds  # wall time: validation and checkpoints included
    if rows:
        figures["epoch_log"] = [{k: _finite(v) for k, v in row.items()} for row in rows]
        figures["last_epoch_val_bpd"] = _finite(rows[-1].get("val_bpd"))
        if batch and len(rows) >= 2:  # the first epoch carries the start-up; after it, the steady rate
            first, last = rows[0], rows[-1]
            d_steps = _finite(last["step"]) - _finite(first["step"])
            d_seconds = _finite(last["seconds"]) - _finite(first["seconds"])
            if d_seconds:
                figures["images_per_s_after_first_epoch"] = d_steps * batch / d_seconds
    return figures


def _slug(text: str) -> str:
    """runner/layout.slug (importing it would import the whole runner, torch and Lightning with it)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-")


def evaluate_figures(run: Path | None, pair: str) -> dict[str, Any] | None:
    """The likelihood score's AUROC and the mean bits/dim of each set, from the evaluation's metrics.json."""
    if run is None:
        return None
    in_name, _, out_name = pair.partition(":")
    content = _read_json(run / "eval" / f"{_slug(in_name)}_vs_{_slug(out_name)}" / "metrics.json")
    if content is None:
        return None
    rows = [row for row in content.get("rows", []) if row.get("score") == "likelihood"]
    if not rows:
        return {"pair": pair, "error": "no likelihood row in metrics.json"}
    row = rows[0]
    keys = ("auroc", "aupr_in", "aupr_out", "fpr_at_95_tpr", "fpr_at_80_tpr", "ood_lower_bpd", "checkpoint", "epochs",
            "bound", *(f"{stat}_{s}{suffix}" for s in ("in_train", "in_val", "in_test", "out_test")
                       for stat, suffix in (("bpd", "_mean"), ("n", ""))))
    return {"pair": pair, **{key: row.get(key) for key in keys if key in row}}


def projection(train: dict[str, Any] | None, bench_figures: dict[str, Any]) -> dict[str, Any]:
    """Hours for the paper's Glow: PAPER_EPOCHS epochs of CIFAR10_TRAIN_IMAGES images at each measured rate."""

    def hours(rate: Any) -> dict[str, Any] | None:
        rate = _finite(rate)
        if not rate:
            return None
        return {"images_per_s": rate, "hours": PAPER_EPOCHS * CIFAR10_TRAIN_IMAGES / rate / 3600}

    paper = bench_figures.get("paper", {})
    train = train or {}
    return {
        "epochs": PAPER_EPOCHS,
        "images_per_epoch": CIFAR10_TRAIN_IMAGES,
        "formula": "hours = epochs * images_per_epoch / images_per_s / 3600",
        "note": f"only {STAGED_CIFAR10_TRAIN_IMAGES:,} of CIFAR-10's {CIFAR10_TRAIN_IMAGES:,} training images are staged "
                f"(../shared/data/README.md): the {train.get('max_minutes', '?')}-minute run trained on "
                f"{train.get('n_train', '?')} of them and validated on {train.get('n_val', '?')}; the rates are per image, "
                "so they carry over to the full split. from_train is images trained per second of wall time after the "
                "first epoch, validation and checkpoints included (a longer epoch spreads them thinner); "
                "from_bench_* are training steps alone (scripts/bench.py --size paper, batch 64)",
        "from_train": hours(train.get("images_per_s_after_first_epoch") or train.get("images_per_s")),
        "from_bench_paper_fp32": hours((((paper.get("32-true") or {}).get("families") or {}).get("glow") or {})
                                       .get("train_images_per_s")),
        "from_bench_paper_bf16_mixed": hours((((paper.get("bf16-mixed") or {}).get("families") or {}).get("glow") or {})
                                             .get("train_images_per_s")),
    }


def summarize(steps: Path, *, run: Path | None, pair: str, meta: dict[str, Any],
              imported: Path | None = None) -> dict[str, Any]:
    states = step_states(steps)
    bench_figures = bench(steps)
    train = train_figures(run)
    return {
        "what": "oodbench GPU check (scripts/gpu_check.sh)",
        "written_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **meta,
        "ok": bool(states) and all(s["state"] == "ok" for s in states),
        "seconds": round(sum(s["seconds"] or 0 for s in states), 1),
        "steps": states,
        "machine": machine(steps),
        "pytest_gpu": pytest_counts(steps),
        "bench": bench_figures,
        "train": train,
        "evaluate": evaluate_figures(run, pair),
        "import": evaluate_figures(imported, pair),
        "projection": projection(train, bench_figures),
    }


# ---- the machine (the `info` step; imports torch) ---------------------------------------------------------

def machine_info(device: str) -> dict[str, Any]:
    import platform

    import pytorch_lightning as pl
    import torch

    info: dict[str, Any] = {"python": platform.python_version(), "python_executable": sys.executable,
                            "torch": torch.__version__, "torch_cuda": torch.version.cuda,
                            "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                            "pytorch_lightning": pl.__version__, "cuda_available": torch.cuda.is_available(),
                            "device": device}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(device_count=torch.cuda.device_count(), device_name=props.name,
                    device_memory_mib=props.total_memory / 2**20, capability=f"{props.major}.{props.minor}",
                    bf16_supported=torch.cuda.is_bf16_supported(),
                    tf32={"cudnn_conv": torch.backends.cudnn.allow_tf32, "matmul": torch.backends.cuda.matmul.allow_tf32})
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    commands = parser.add_subparsers(dest="command", required=True)
    summary = commands.add_parser("summarize", help="assemble the steps' figures into one JSON")
    summary.add_argument("--steps", type=Path, required=True, help="the steps folder (plan.tsv, logs, outputs)")
    summary.add_argument("--out", type=Path, required=True)
    summary.add_argument("--run", type=Path, default=None, help="the run folder the train step made")
    summary.add_argument("--imported-run", type=Path, default=None, help="the run folder the import step made")
    summary.add_argument("--pair", default="cifar10:svhn")
    summary.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                         help="a top-level field (repeatable): device, budget_s, data_root...")
    info = commands.add_parser("info", help="the machine: GPU, torch, CUDA (imports torch)")
    info.add_argument("--out", type=Path, required=True)
    info.add_argument("--device", default="cuda")
    args = parser.parse_args(argv)

    if args.command == "info":
        content = machine_info(args.device)
        args.out.write_text(json.dumps(content, indent=2) + "\n")
        print(json.dumps(content, indent=2))
        if args.device == "cuda" and not content["cuda_available"]:
            print("error: torch.cuda.is_available() is False", file=sys.stderr)
            return 1
        return 0
    meta = {}
    for item in args.meta:
        key, _, value = item.partition("=")
        meta[key] = int(value) if value.isdigit() else value
    content = summarize(args.steps, run=args.run, pair=args.pair, meta=meta, imported=args.imported_run)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_name(args.out.name + ".tmp")
    tmp.write_text(json.dumps(content, indent=2, allow_nan=False) + "\n")
    tmp.replace(args.out)  # a kill mid-write leaves the previous summary whole
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
