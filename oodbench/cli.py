"""The `oodbench` command line: thin Typer commands that resolve one configuration, call one runner
function and render the result with rich.

Priority of settings: command-line flag > the `--profile` in benchmarks.yaml > built-in defaults.
Exit codes: 0 success; 2 bad input (unknown name, malformed pair, missing data, missing, corrupt or
unsafe checkpoint, bad option value, unwritable folder), printed as one line without a traceback; 1 an
unexpected failure; 130 / 143 interrupted by SIGINT (Ctrl-C) / SIGTERM, with one line saying what was
kept and how to resume (rerun the same command).

Names (models, datasets, pairs, scores, profiles) and option values are checked before torch, Lightning
and pandas are imported (the names' light list is `names.py`), so a typo is answered in a fraction of a
second instead of after the 5 s those imports take; each command imports its runner only then.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import signal
import sys
from pathlib import Path
from typing import Annotated, Any, Callable, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from oodbench.config import (
    ACCELERATORS,
    ANALYSES as ANALYSES_DEFAULT,
    DEFAULT_BENCHMARKS,
    Profile,
    TrainConfig,
    load_profile,
    resolve,
)
from oodbench.data.refs import display_name, parse_dataset_ref, parse_pair
from oodbench.errors import Interrupted, OodbenchError
from oodbench.names import CHECKPOINT_SOURCES, MODELS, SCORES, check_checkpoint_source, check_model, parse_scores
from oodbench.terminal import FittedTable

app = typer.Typer(add_completion=False, no_args_is_help=True, pretty_exceptions_enable=False, rich_markup_mode=None,
                  help="Do deep generative models know what they don't know? Likelihood-based OOD benchmark.")
data_app = typer.Typer(no_args_is_help=True, rich_markup_mode=None, help="Inspect the datasets oodbench knows.")
app.add_typer(data_app, name="data")

# Piped output (CI logs, files) gets a width that fits the tables instead of rich's 80 columns.
_WIDTH = None if sys.stdout.isatty() or "COLUMNS" in os.environ else 150
console = Console(width=_WIDTH)
err_console = Console(stderr=True, width=_WIDTH)


def _print_version(value: bool) -> None:
    if value:
        from oodbench import __version__  # the package's own light module: no torch

        console.print(f"oodbench {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _app_options(version: Annotated[bool, typer.Option(
        "--version", callback=_print_version, is_eager=True, help="Print oodbench's version and exit.")] = False) -> None:
    # No docstring: the app's help (Typer(help=...)) stays the one `oodbench --help` shows.
    pass

# ---- shared options, declared once --------------------------------------------------------------
ConfigOpt = Annotated[Path, typer.Option("--config", help="benchmarks.yaml holding the profiles.")]
ProfileOpt = Annotated[Optional[str], typer.Option("--profile", help="Named profile in benchmarks.yaml.")]
DataRootOpt = Annotated[Optional[str], typer.Option(
    "--data-root", help="Dataset folder (torchvision layout or <root>/<name>/<split>.npz); 'demo' = embedded "
    "subset. Default: $OODBENCH_DATA, else ~/.cache/oodbench.")]
DownloadOpt = Annotated[bool, typer.Option("--download/--no-download", help="Let torchvision download missing data.")]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Training seed.")]
RunsDirOpt = Annotated[Path, typer.Option("--runs-dir", help="Folder holding run folders.")]
AcceleratorOpt = Annotated[Optional[str], typer.Option(
    "--accelerator", help=f"Lightning accelerator: {', '.join(ACCELERATORS)}.")]
DevicesOpt = Annotated[Optional[str], typer.Option("--devices", help="Lightning devices: auto, 1, 2, '0,1'...")]
PrecisionOpt = Annotated[Optional[str], typer.Option(
    "--precision", help="Training precision: 32-true, bf16-mixed, 16-mixed. Likelihoods that are reported or pick "
    "the best checkpoint are computed in float32 whatever this says.")]
CompileOpt = Annotated[Optional[bool], typer.Option(
    "--compile/--no-compile", help="Train through torch.compile: fuses the elementwise work between convolutions "
    "(faster steps after a first one that compiles, about a minute on 2 CPU cores); scoring is unchanged.")]
NodesOpt = Annotated[Optional[int], typer.Option("--num-nodes", help="Lightning nodes.")]
StrategyOpt = Annotated[Optional[str], typer.Option("--strategy", help="Lightning strategy: auto, ddp...")]
BatchOpt = Annotated[Optional[int], typer.Option("--batch-size", help="Images per batch.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
SkipUnreadableOpt = Annotated[bool, typer.Option(
    "--skip-unreadable", help="folder: datasets: leave out files Pillow cannot read (counted in the output) instead "
    "of stopping with the list of them.")]
BackgroundRunOpt = Annotated[Optional[Path], typer.Option(
    "--background-run", help="A background model of the same family and data (`train --background 0.2`), for the "
    "likelihood ratio.")]
MemberRunOpt = Annotated[list[Path], typer.Option(
    "--member-run", help="Another seed of the same setup, an ensemble member for ensemble_likelihood and waic "
    "(repeatable).")]
RecomputeOpt = Annotated[bool, typer.Option(
    "--recompute-statistics", help="Score every set with the model again instead of reading the run's statistics "
    "cache (the cache is keyed by checkpoint, images and settings, so this is never needed for correctness).")]


def _fail(message: str, code: int) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code=code)


def user_errors(command: Callable[..., Any]) -> Callable[..., Any]:
    """Expected failures become one line and their exit code; unexpected ones exit 1 without a traceback
    (set OODBENCH_DEBUG=1 to see it)."""

    @functools.wraps(command)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return command(*args, **kwargs)
        except OodbenchError as exc:
            _fail(str(exc), exc.exit_code)
        except (typer.Exit, typer.Abort, KeyboardInterrupt, Interrupted):
            raise
        except Exception as exc:
            if os.environ.get("OODBENCH_DEBUG"):
                raise
            first_line = (str(exc).strip().splitlines() or [""])[0]
            _fail(f"unexpected {type(exc).__name__}: {first_line} (rerun with OODBENCH_DEBUG=1 for the traceback)", 1)

    return wrapper


def _profile(name: str | None, config: Path) -> Profile:
    return load_profile(name, config if name is not None else None)


def _model_settings(profile: Profile, model: str, overrides: list[str]) -> dict[str, Any]:
    import yaml

    settings = dict(profile.models.get(model, {}))
    for item in overrides:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise OodbenchError(f"bad --set {item!r}: expected KEY=VALUE, e.g. --set hidden_channels=128")
        settings[key.strip()] = yaml.safe_load(value)
    return settings


def _metrics_table(rows: list[dict[str, Any]], title: str) -> FittedTable:
    """Per result: training, images per set, bits/dim per set and the likelihood score's AUROC / FPR@80%TPR
    (a folder dataset by its last path component; results.csv has the path)."""
    table = FittedTable(title=title, names=("model", "pair (in:out)", "seed"), left=("OOD lower?",),
                        values=("trained", "images train/test/OOD", "BPD train/test/OOD", "AUROC", "FPR80", "OOD lower?"),
                        caption="bits/dim per set (per dimension of the dataset's own image); AUROC, FPR@80%TPR of the "
                                "BPD score (OOD = positive)")
    from oodbench.report.tables import trained_text  # rows exist: the runner (and pandas) are imported already

    for row in rows:
        table.add_row(escape(row["model"]), escape(display_name(row["pair"])), str(row["seed"]),
                      trained_text(row["epochs"], row["train_seconds"]),
                      f"{row['n_in_train']:,} / {row['n_in_test']:,} / {row['n_out_test']:,}",
                      f"{row['bpd_in_train_mean']:.3f} / {row['bpd_in_test_mean']:.3f} / {row['bpd_out_test_mean']:.3f}",
                      f"{row['auroc']:.3f}", f"{row['fpr_at_80_tpr']:.3f}",
                      "[red]yes[/]" if row["ood_lower_bpd"] else "[green]no[/]")
    return table


def _scores_table(rows: list[dict[str, Any]], title: str) -> FittedTable:
    """AUROC of every score (columns) per result (rows), from results rows of several scores."""
    from oodbench.scores import short_label

    shorts = list(dict.fromkeys(short_label(r["score"], r["score_params"]) for r in rows))
    table = FittedTable(title=title, names=("model", "pair (in:out)", "seed"), values=[escape(s) for s in shorts],
                        caption="AUROC per score (OOD = positive; 1 = perfect, 0.5 = chance); typ M=k: batches of k "
                                "images")
    by_result: dict[tuple, dict[str, float]] = {}
    for row in rows:
        key = (row["model"], row["pair"], row["seed"], row["setup"])
        by_result.setdefault(key, {})[short_label(row["score"], row["score_params"])] = row["auroc"]
    for (model, pair, seed, _), aurocs in by_result.items():
        table.add_row(escape(model), escape(display_name(pair)), str(seed),
                      *(f"{aurocs[s]:.3f}" if s in aurocs else "-" for s in shorts))
    return table


def _print_findings(rows: list[dict[str, Any]]) -> None:
    from oodbench.report import finding

    for row in rows:
        prefix = f"{row['model']} (seed {row['seed']}): " if len(rows) > 1 else ""
        console.print(escape(prefix + finding(row)), highlight=False)


# ---- commands --------------------------------------------------------------------------------------
@app.command()
@user_errors
def train(
    model: Annotated[str, typer.Option("--model", help=f"Model family: {', '.join(MODELS)}.")],
    dataset: Annotated[str, typer.Option(
        "--dataset", help="Training dataset, e.g. fashionmnist, cifar10, or your images: folder:PATH, npz:PATH.")],
    profile: ProfileOpt = None,
    config: ConfigOpt = DEFAULT_BENCHMARKS,
    seed: SeedOpt = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", help="Epochs to train.")] = None,
    max_minutes: Annotated[Optional[float], typer.Option(
        "--max-minutes", help="Stop this command's training after this many minutes, or at --epochs (the profile's) "
        "if that comes first; a --resume trains for its own minutes.")] = None,
    batch_size: BatchOpt = None,
    lr: Annotated[Optional[float], typer.Option("--lr", help="Peak learning rate.")] = None,
    limit_train: Annotated[Optional[int], typer.Option(
        "--limit-train", help="Train on N images of the training split (a fixed random subset).")] = None,
    model_set: Annotated[list[str], typer.Option("--set", metavar="KEY=VALUE",
                                                 help="Model setting, e.g. hidden_channels=128 (repeatable).")] = [],  # noqa: B006
    background: Annotated[Optional[float], typer.Option(
        "--background", metavar="RATE", help="Train a background model for the likelihood ratio (Ren et al. 2019): "
        "each sub-pixel replaced by a uniform value with probability RATE (0.1-0.3; e.g. 0.2).")] = None,
    weight_decay: Annotated[Optional[float], typer.Option(
        "--weight-decay", help="L2 penalty on the weights (Adam's weight_decay), e.g. 1e-4 for a background model.")] = None,
    run_dir: Annotated[Optional[Path], typer.Option(
        "--run-dir", help="Run folder (default runs/<model>-<dataset>-seed<seed>[-bg<RATE>]).")] = None,
    runs_dir: RunsDirOpt = Path("runs"),
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    accelerator: AcceleratorOpt = None,
    devices: DevicesOpt = None,
    num_nodes: NodesOpt = None,
    strategy: StrategyOpt = None,
    precision: PrecisionOpt = None,
    compile: CompileOpt = None,
    logger: Annotated[Optional[str], typer.Option(
        "--logger", help="Training curves to Lightning's csv, tensorboard, wandb or mlflow logger too (default: "
        "tensorboard if installed; each needs its package); the run's logs/metrics.csv is always written.")] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in --run-dir from its last checkpoint, e.g. with a larger --epochs. (An "
        "unfinished run with the same settings resumes without it.)")] = False,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Delete an existing run in --run-dir first.")] = False,
    curve_ood: Annotated[Optional[str], typer.Option(
        "--curve-ood", metavar="SETS", help="Record bits/dim over training (logs/ood_curve.csv) of fixed subsets of "
        "the training images, the test set and these OOD sets, e.g. mnist,kmnist (Nalisnick et al.'s early-stopping "
        "check; `oodbench analyze --what curve` draws it).")] = None,
    curve_every: Annotated[Optional[int], typer.Option(
        "--curve-every", help="Steps between the curve's points (default: about 4 per epoch; 0: off).")] = None,
    image_size: Annotated[Optional[int], typer.Option(
        "--image-size", help="folder: / npz: datasets: the side images are resized (shorter side) and centre-cropped "
        "to; default 32.")] = None,
    skip_unreadable: SkipUnreadableOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train a likelihood model on one dataset."""
    check_model(model)
    dataset = str(parse_dataset_ref(dataset))  # canonical: "CIFAR10" -> "cifar10", "folder:~/x" -> "folder:/home/me/x"
    chosen = _profile(profile, config)
    train_cfg = resolve(chosen.train_for(model), dict(
        seed=seed, epochs=epochs, max_minutes=max_minutes, batch_size=batch_size, lr=lr, limit_train=limit_train,
        background=background, weight_decay=weight_decay, accelerator=accelerator, devices=devices,
        num_nodes=num_nodes, strategy=strategy, precision=precision, compile=compile, logger=logger,
        curve_every=curve_every))
    model_settings = _model_settings(chosen, model, model_set)
    ood_sets = tuple(str(parse_dataset_ref(name)) for name in (curve_ood or "").split(",") if name.strip())
    from oodbench.runner import TrainRequest, train as run_training  # every name and value above is checked
    from oodbench.runner.layout import run_name

    request = TrainRequest(
        model=model, dataset=dataset, train=train_cfg, model_settings=model_settings,
        run_dir=run_dir or runs_dir / run_name(model, dataset, train_cfg.seed, train_cfg.background),
        data_root=data_root if data_root is not None else chosen.data_root,
        download=download, resume=resume, overwrite=overwrite, quiet=quiet, notify=console.print,
        image_size=image_size, skip_unreadable=skip_unreadable, ood_sets=ood_sets,
    )
    result = run_training(request)
    if not result.first_process:  # under DDP, one summary line, not one per process
        return
    console.print(_trained_line(model, dataset, result))


def _trained_line(model: str, dataset: str, result: Any) -> str:
    from oodbench.runner.train import plural  # imported already: the run has just trained

    done = plural(result.epochs, "epoch")
    if result.partial_steps:
        done = (f"{plural(result.epochs, 'complete epoch')} and {plural(result.partial_steps, 'step')} of epoch "
                f"{result.epochs + 1} (stopped by --max-minutes)")
    val = f", best validation {result.val_bpd:.3f} bits/dim" if result.val_bpd is not None else ""
    verb = "already trained" if result.already_trained else "trained"
    return (f"{verb} {model} on {dataset}: {done}, {plural(result.steps, 'step')} in {result.seconds:.0f}s{val}; "
            f"run folder {result.paths.root}")


@app.command("import")
@user_errors
def import_checkpoint(
    source: Annotated[str, typer.Argument(help=f"Who released the checkpoint: {', '.join(CHECKPOINT_SOURCES)}.")],
    files: Annotated[list[Path], typer.Argument(
        help="The released file(s), as downloaded (likelihood-regret-vae: the encoder and decoder files; diffusers-ddpm: "
        "the model's folder, or its config.json, weights and scheduler_config.json).")],
    dataset: Annotated[str, typer.Option(
        "--dataset", help="The registered dataset the model was trained on, e.g. cifar10, fashionmnist.")],
    run_dir: Annotated[Optional[Path], typer.Option(
        "--run-dir", help="Run folder to write (default runs/<model>-<dataset>-<source>).")] = None,
    reported_bpd: Annotated[Optional[float], typer.Option(
        "--reported-bpd", help="The test bits/dim the model's authors report, kept in the run record (default: the "
        "figure the source publishes for --dataset, if any).")] = None,
    data_root: DataRootOpt = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing run in --run-dir.")] = False,
) -> None:
    """Turn a released checkpoint (y0ast's Glow, pclucas14's PixelCNN++, Xiao et al.'s VAEs, a diffusers DDPM) into a
    run folder that evaluate, score, analyze, report and sweep read like a trained one."""
    check_checkpoint_source(source)
    dataset = str(parse_dataset_ref(dataset))
    from oodbench.runner.importing import ImportRequest, import_checkpoint as run_import

    result = run_import(ImportRequest(source=source, files=tuple(files), dataset=dataset, run_dir=run_dir,
                                      data_root=data_root, reported_bpd=reported_bpd, overwrite=overwrite))
    record = result.record
    reported = record.origin.get("reported_bpd")
    said = f"; its authors report {reported} bits/dim" if reported is not None else ""
    console.print(f"imported {source} as {record.model} on {record.dataset} ({result.n_params / 1e6:.2f}M parameters"
                  f"{said}) into run folder {result.paths.root}")
    console.print(f"next: oodbench evaluate --run {result.paths.root} --pair {record.dataset}:OUT")


@app.command()
@user_errors
def evaluate(
    pair: Annotated[str, typer.Option(
        "--pair", help="IN:OUT, e.g. cifar10:svhn, fashionmnist:mnist, cifar10:folder:PATH (your images).")],
    run: Annotated[Optional[Path], typer.Option("--run", help="Run folder to evaluate.")] = None,
    model: Annotated[Optional[str], typer.Option("--model", help="Evaluate runs-dir/<model>-<IN>-seed<seed>.")] = None,
    seed: Annotated[int, typer.Option("--seed", help="Seed of the run (with --model).")] = 0,
    runs_dir: RunsDirOpt = Path("runs"),
    profile: ProfileOpt = None,
    config: ConfigOpt = DEFAULT_BENCHMARKS,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best or last.")] = "best",
    batch_size: BatchOpt = None,
    train_sample: Annotated[Optional[int], typer.Option("--train-sample", help="Training images to score.")] = None,
    limit: Annotated[Optional[int], typer.Option("--limit", help="Score only the first N test images per set.")] = None,
    match_channels: Annotated[Optional[bool], typer.Option("--match-channels/--no-match-channels",
                                                           help="Convert the OOD set to the model's channels.")] = None,
    iw_samples: Annotated[Optional[int], typer.Option(
        "--iw-samples", help="VAE only: importance samples k of the IWAE bound (1 = ELBO); default: the model's.")] = None,
    scores: Annotated[Optional[str], typer.Option(
        "--scores", help=f"OOD scores to compute, e.g. likelihood,typicality (default: every one; valid: "
        f"{', '.join(SCORES)}). Scores the evaluation already had are kept.")] = None,
    background_run: BackgroundRunOpt = None,
    member_run: MemberRunOpt = [],  # noqa: B006
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    accelerator: AcceleratorOpt = None,
    devices: DevicesOpt = None,
    num_nodes: NodesOpt = None,
    strategy: StrategyOpt = None,
    recompute: RecomputeOpt = False,
    skip_unreadable: SkipUnreadableOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Score a trained model on IN train/validation/test and OUT test (in float32), then every OOD score;
    write per-sample statistics and scores, and one metrics row per score."""
    parsed = parse_pair(pair)
    score_names = parse_scores(scores)
    if (run is None) == (model is None):
        raise OodbenchError("pass exactly one of --run DIR or --model NAME")
    if model is not None:
        check_model(model)
    chosen = _profile(profile, config)
    flags = dict(batch_size=batch_size, train_sample=train_sample, limit=limit, match_channels=match_channels,
                 iw_samples=iw_samples, scores=score_names, accelerator=accelerator, devices=devices,
                 num_nodes=num_nodes, strategy=strategy)
    resolve(chosen.eval, flags)  # each value checked now; the run's family's own settings are the base below
    from oodbench.runner import EvalRequest, RunPaths, evaluate as run_evaluation, find_run
    from oodbench.schema import RunRecord

    paths = RunPaths(run) if run is not None else find_run(runs_dir, model, str(parsed.in_ref), seed)
    family = model or RunRecord.read(paths.config).model  # a family's own evaluation settings apply to --run too
    eval_cfg = resolve(chosen.eval_for(family), flags)
    result = run_evaluation(EvalRequest(
        run=paths, pair=pair, eval=eval_cfg, data_root=data_root, download=download, checkpoint=checkpoint, quiet=quiet,
        recompute=recompute, background=RunPaths(background_run) if background_run is not None else None,
        members=tuple(RunPaths(p) for p in member_run), skip_unreadable=skip_unreadable))
    if result.written:
        console.print(_metrics_table([result.metrics], title="oodbench evaluate"))
        console.print(_scores_table(result.rows, title="scores"))
        for label, why in result.skipped.items():
            console.print(f"[yellow]skipped {escape(label)}: {escape(why)}[/]")
        _print_findings([result.metrics])
        cached = [s for s in ("in_train", "in_val", "in_test", "out_test") if s not in result.computed]
        reused = f"; statistics of {', '.join(cached)} came from the run's cache" if cached else ""
        console.print(f"wrote {result.folder}/scores.csv and metrics.json{reused}")


@app.command()
@user_errors
def score(
    run: Annotated[Path, typer.Option("--run", help="Trained run folder whose model scores the images.")],
    images: Annotated[str, typer.Option(
        "--images", help="Images to score: a folder (any format Pillow reads, subfolders included), an .npz file "
        "(array x), or a registered dataset's test split (e.g. svhn).")],
    scores: Annotated[Optional[str], typer.Option(
        "--scores", help="OOD scores to add beside bits/dim, e.g. likelihood,input_complexity (default: every "
        "per-image score the run supports).")] = None,
    by: Annotated[str, typer.Option("--by", help="The score whose threshold gives the verdict.")] = "likelihood",
    accept: Annotated[float, typer.Option(
        "--accept", help="The threshold accepts this fraction of the run's in-distribution test images.")] = 0.95,
    out: Annotated[Path, typer.Option("--out", help="CSV to write, one row per image.")] = Path("scores.csv"),
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best or last.")] = "best",
    batch_size: BatchOpt = None,
    iw_samples: Annotated[Optional[int], typer.Option(
        "--iw-samples", help="VAE only: importance samples k of the bound (default: the model's).")] = None,
    match_channels: Annotated[bool, typer.Option(
        "--match-channels", help="Convert a registered dataset to the model's channels.")] = False,
    background_run: BackgroundRunOpt = None,
    member_run: MemberRunOpt = [],  # noqa: B006
    data_root: DataRootOpt = None,
    skip_unreadable: SkipUnreadableOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """The density gate: score new images with a trained run (bits/dim and each OOD score, in float32) and
    give each a verdict at the threshold that accepts --accept of the run's in-distribution test images.
    Exits 0 whatever the verdicts."""
    asked = parse_scores(scores)
    from oodbench.atomic import check_writable, write_with
    from oodbench.runner import RunPaths
    from oodbench.runner.gate import VERDICT_OOD, VERDICT_UNREADABLE, GateRequest, score_images
    from oodbench.schema import RunRecord

    check_writable(out.parent if str(out.parent) else Path("."), "--out")
    family = RunRecord.read(RunPaths(run).config).model  # the built-in (CPU) evaluation settings of its family
    eval_cfg = resolve(load_profile(None).eval_for(family), dict(batch_size=batch_size, iw_samples=iw_samples,
                                                                 match_channels=match_channels))
    result = score_images(GateRequest(
        run=RunPaths(run), images=images, scores=asked, by=by, accept=accept, eval=eval_cfg,
        checkpoint=checkpoint, data_root=data_root, skip_unreadable=skip_unreadable, quiet=quiet,
        background=RunPaths(background_run) if background_run is not None else None,
        members=tuple(RunPaths(p) for p in member_run)))
    table = result.table
    write_with(out, lambda tmp: table.to_csv(tmp, index=False, float_format="%.6f"))
    # On screen: bits/dim, each other score under its short heading, the verdict; the CSV has everything.
    columns = {"file": "file", "bpd": "BPD", **{label: heading for label, heading in result.headings.items()
                                                if label != "likelihood"}, "verdict": "verdict"}
    shown = FittedTable(title=f"most and least typical of {len(table) - len(result.unreadable):,} images (by "
                        f"{result.headings[result.by]}; "
                        "larger = more OOD)", names=("file",), left=("verdict",),
                        values=[escape(heading) for column, heading in columns.items() if column != "file"])
    ranked = table[table["verdict"] != VERDICT_UNREADABLE].sort_values(result.by, kind="stable")
    ends = [ranked.head(5), ranked.tail(5)] if len(ranked) > 10 else [ranked]
    for part, frame in enumerate(ends):
        if part:
            shown.add_row(*["..."] * len(columns))
        for row in frame[list(columns)].itertuples(index=False):
            shown.add_row(*(f"{value:.3f}" if isinstance(value, float) else escape(str(value)) for value in row))
    console.print(shown)
    for label, why in result.skipped.items():
        if label.partition("(")[0] in (asked or ()):  # the defaults' inapplicable scores are only counted
            console.print(f"[yellow]no per-image {escape(label)}: {escape(why)}[/]")
    if result.skipped and not asked:
        console.print(f"{len(result.skipped)} score variant(s) give no per-image value for this run (batch scores, "
                      f"or needing another run or family): {escape(', '.join(result.skipped))}", highlight=False)
    flagged, scored = int((table["verdict"] == VERDICT_OOD).sum()), len(table) - len(result.unreadable)
    if result.unreadable:
        console.print(f"[yellow]{len(result.unreadable):,} file(s) could not be read and were left out (--skip-"
                      f"unreadable): {escape(', '.join(result.unreadable[:5]))}{', ...' if len(result.unreadable) > 5 else ''}"
                      f"; each is a row of {escape(str(out))} with the verdict {VERDICT_UNREADABLE!r}[/]", highlight=False)
    if result.warning:
        console.print(f"[bold yellow]warning:[/] [yellow]{escape(result.warning)}[/]", highlight=False)
    console.print(f"threshold {result.by} <= {result.threshold:.4f} accepts {result.accepted_in:.1%} of the run's "
                  f"{result.n_in:,} in-distribution test images ({escape(result.in_set)}); {flagged:,} of "
                  f"{scored:,} images flagged OOD; wrote {out}", highlight=False)


@app.command()
@user_errors
def analyze(
    run: Annotated[Path, typer.Option("--run", help="Run folder to analyse (all but samples need a flow: glow, cv-glow).")],
    pair: Annotated[list[str], typer.Option(
        "--pair", help="IN:OUT, IN the run's dataset (repeatable); the decomposition and samples need its evaluation.")] = [],  # noqa: B006
    what: Annotated[Optional[str], typer.Option(
        "--what", help="Comma-separated: decomposition (log p(z) and log|det| per set, the paper's Fig. 3), "
        "second-order (Sec. 5: variance terms, closed form, exact Hessian terms, measured gap), curve (bits/dim "
        "over training), samples (the model's own samples: a grid, and their bits/dim against each pair's test and "
        "OOD sets; the profile's analysis: n_samples, n_samples_pixelcnn, sample_temperature). Default: every one "
        "that applies to the run (one named here that does not is an error).")] = None,
    n_images: Annotated[Optional[int], typer.Option("--n-images", help="Images per set in the second-order analysis.")] = None,
    probes: Annotated[Optional[int], typer.Option(
        "--probes", help="Hutchinson probes for the Hessian diagonal (default: exact, one product per dimension).")] = None,
    profile: ProfileOpt = None,
    config: ConfigOpt = DEFAULT_BENCHMARKS,
    data_root: DataRootOpt = None,
    checkpoint: Annotated[str, typer.Option("--checkpoint", help="best or last.")] = "best",
    match_channels: Annotated[bool, typer.Option(
        "--match-channels", help="Convert an OOD set of other channels to the model's (as evaluate does).")] = False,
) -> None:
    """The paper's analyses of a trained flow, and any model's own samples: tables and figures into the run's
    analysis/ folder (`oodbench report` gathers them)."""
    base = _profile(profile, config).analysis
    try:
        names = tuple(w.strip() for w in (what or ",".join(ANALYSES_DEFAULT)).split(",") if w.strip())
        settings = dataclasses.replace(base, what=names,
                                       **{k: v for k, v in dict(n_images=n_images, probes=probes).items() if v is not None})
    except OodbenchError as exc:
        raise OodbenchError(f"bad --what/--n-images/--probes: {exc}") from None
    from oodbench.report.analyses import run_figures
    from oodbench.runner import RunPaths
    from oodbench.runner.analyze import AnalyzeRequest, analyze as run_analysis

    paths = RunPaths(run)
    result = run_analysis(AnalyzeRequest(run=paths, pairs=tuple(pair), analysis=settings, data_root=data_root,
                                         checkpoint=checkpoint, strict=what is not None,
                                         match_channels=match_channels))
    if not result.written:
        raise OodbenchError(f"no analysis applies to {run}: {'; '.join(result.skipped) or 'nothing asked for'}")
    figures = run_figures(paths)
    for why in result.skipped:
        console.print(f"[yellow]skipped: {escape(why)}[/]")
    for path in [*result.written, *figures]:
        console.print(f"wrote {path}", highlight=False)


@app.command()
@user_errors
def report(
    runs: Annotated[list[Path], typer.Option(
        "--runs", help="A folder of run folders, or a run folder (repeatable, to merge shards); sweeps keep theirs "
        "in runs/<profile>.")] = [Path("runs")],  # noqa: B006
    out: Annotated[Path, typer.Option("--out", help="Report folder: results.csv, summary.csv, results.md, results.tex, figures.")] = Path(
        "results"),
) -> None:
    """Merge the evaluations of the runs in --runs into one report folder."""
    from oodbench.report import write_report

    table = write_report(list(runs), out)
    _show_report(table.to_dict("records"), out, title="oodbench report")


def _show_report(rows: list[dict[str, Any]], out: Path, *, title: str) -> None:
    likelihood = [row for row in rows if row["score"] == "likelihood"]
    console.print(_metrics_table(likelihood, title=title))
    console.print(_scores_table(rows, title="scores"))
    _print_findings(likelihood)
    console.print(f"wrote {out}/results.csv, {out}/summary.csv, {out}/results.md, {out}/results.tex and "
                  f"{len(likelihood)} histogram(s) and {len(likelihood)} ROC figure(s)")


@app.command()
@user_errors
def demo(
    runs_dir: Annotated[Path, typer.Option("--runs-dir", help="Where the demo's runs go.")] = Path("runs/demo"),
    out: Annotated[Path, typer.Option("--out", help="Where the report goes.")] = Path("results/demo"),
    config: ConfigOpt = DEFAULT_BENCHMARKS,
    quiet: QuietOpt = False,
) -> None:
    """The main job, offline: train Glow on the embedded Fashion-MNIST subset, score it against MNIST,
    report. It is `oodbench sweep --profile demo`, so a second run reuses what the first trained."""
    _run_sweep(profile="demo", config=config, runs_dir=runs_dir, out=out, quiet=quiet)


@app.command()
@user_errors
def sweep(
    profile: Annotated[str, typer.Option("--profile", help="Profile in benchmarks.yaml: demo, quick, paper...")],
    config: ConfigOpt = DEFAULT_BENCHMARKS,
    only: Annotated[Optional[str], typer.Option("--only", help="Filter cells: model=glow,dataset=cifar10,seed=0.")] = None,
    shard: Annotated[Optional[str], typer.Option("--shard", help="I/N: run the I-th of N slices (0 <= I < N).")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the plan and exit.")] = False,
    runs_dir: Annotated[Optional[Path], typer.Option("--runs-dir", help="Default runs/<profile>.")] = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Report folder; default results/<profile>.")] = None,
    data_root: DataRootOpt = None,
    download: DownloadOpt = False,
    accelerator: AcceleratorOpt = None,
    devices: DevicesOpt = None,
    num_nodes: NodesOpt = None,
    strategy: StrategyOpt = None,
    precision: PrecisionOpt = None,
    compile: CompileOpt = None,
    recompute: RecomputeOpt = False,
    quiet: QuietOpt = False,
) -> None:
    """Train and evaluate every (model, dataset, seed) cell of a profile; resumable and shardable."""
    hardware = dict(accelerator=accelerator, devices=devices, num_nodes=num_nodes, strategy=strategy,
                    precision=precision, compile=compile)
    # A bad value answers now, not in every cell once the sweep has started (evaluation's hardware fields
    # are training's, less the precision).
    resolve(TrainConfig(), hardware)
    _run_sweep(profile=profile, config=config, runs_dir=runs_dir or Path("runs") / profile,
               out=out or Path("results") / profile, only=only, shard=shard, dry_run=dry_run, data_root=data_root,
               download=download, quiet=quiet, recompute=recompute, hardware=hardware)


def _run_sweep(*, profile: str, config: Path, runs_dir: Path, out: Path, only: str | None = None,
               shard: str | None = None, dry_run: bool = False, data_root: str | None = None, download: bool = False,
               quiet: bool = False, recompute: bool = False, hardware: dict[str, Any] | None = None) -> None:
    chosen = load_profile(profile, config)  # a misspelt profile answers before the imports below
    from oodbench.atomic import check_writable
    from oodbench.models import model_config
    from oodbench.report import write_report
    from oodbench.runner import sweep as sweeping

    check_writable(runs_dir, "--runs-dir")
    for model, model_settings in chosen.models.items():  # a typo fails now, not an hour into the sweep
        model_config(model, model_settings, where=f"{config} (profile {profile!r})")
        parse_scores(chosen.eval_for(model).scores)
    hardware = hardware or {}
    settings = sweeping.resolve_settings(chosen, runs_dir, data_root=data_root, download=download, quiet=quiet,
                                         hardware=hardware, recompute=recompute)
    cells = sweeping.cells(chosen, only=sweeping.parse_only(only), shard=sweeping.parse_shard(shard))
    if not cells:
        raise OodbenchError(f"no cells in profile {profile!r} match --only {only!r} / --shard {shard!r}")
    plans = [sweeping.plan_cell(c, runs_dir, settings.data_root, download, settings.eval_for(c).scores,
                                chosen.analysis) for c in cells]
    console.print(_plan_table(plans, title=f"oodbench sweep --profile {profile}" + (f" --shard {shard}" if shard else "")))
    if dry_run:
        return

    def announce(plan: sweeping.CellPlan) -> None:
        if plan.action == "skip":
            console.print(f"[yellow]skipping {plan.cell.name}: {escape(plan.reason)}[/]")
        elif plan.action != "done":
            analyses = f", {len(plan.analyses)} pair(s) to analyse" if plan.analyses else ""
            console.print(f"[bold]{plan.action} {plan.cell.name}[/] ({len(plan.pairs)} evaluation(s){analyses})")

    check_writable(out, "--out")
    outcome = sweeping.sweep(plans, settings, announce, notify=lambda message: console.print(escape(message)))
    failed = ", ".join(name for name, _ in outcome.failed)
    if outcome.completed == 0:
        raise OodbenchError(f"nothing ran: every cell was skipped or failed ({failed or 'see above'}); put the data "
                            "under --data-root")
    table = write_report([runs_dir], out)
    _show_report(table.to_dict("records"), out, title=f"oodbench sweep --profile {profile}")
    if outcome.failed:
        raise sweeping.CellsFailed(f"{len(outcome.failed)} cell(s) failed ({failed}; why: above); the report covers "
                                   f"the {outcome.completed} that finished; fix and rerun the same command")


def _plan_table(plans: list[Any], title: str) -> Table:
    """One row per cell: its run folder's name and what the sweep does with it. Text only: every column
    wraps, a long word (a run folder named after a user's folder) folding, so nothing is cut; pairs show a
    folder dataset by its last path component."""
    table = Table(title=title)
    table.add_column("cell", overflow="fold")
    table.add_column("action", no_wrap=True, min_width=len("evaluate"))
    for column in ("pairs to evaluate", "skipped"):
        table.add_column(column, overflow="fold")
    colours = {"done": "green", "skip": "yellow", "train": "cyan", "resume": "cyan", "evaluate": "cyan", "analyze": "cyan"}
    for plan in plans:
        skipped = plan.reason if plan.action == "skip" else "; ".join(f"{display_name(p)} ({why})"
                                                                      for p, why in plan.skipped_pairs)
        table.add_row(escape(plan.cell.name), f"[{colours[plan.action]}]{plan.action}[/]",
                      escape(", ".join(display_name(p) for p in plan.pairs)), escape(skipped))
    return table


@data_app.command("list")
@user_errors
def data_list(data_root: DataRootOpt = None) -> None:
    """Each dataset, its image shape, and how many images of each split are here (of the full split)."""
    from oodbench.data import list_datasets, split_counts

    table = Table(title="oodbench datasets", caption="images found here / in the full split; shape as the models "
                  "see it (28x28 grey sets are padded)")
    for column in ("name", "dataset", "shape (C,H,W)", "images here / full split", "licence"):
        table.add_column(column)
    for spec in list_datasets():
        found = split_counts(spec.name, data_root)
        cells = []
        for split in spec.splits:
            full = spec.sizes.get(split)
            if split not in found:
                cells.append(f"[dim]{split}: missing[/]")
                continue
            have = found[split]
            colour = "green" if have is not None and have == full else "yellow"
            count = "?" if have is None else f"{have:,}"
            cells.append(f"[{colour}]{split} {count}[/]" + (f" / {full:,}" if full and have != full else ""))
        table.add_row(spec.name, spec.title, "x".join(map(str, spec.shape)), ", ".join(cells), spec.licence)
    console.print(table)


def _raise_interrupted(signum: int, frame: Any) -> None:
    # Later signals while the first unwinds (Lightning's teardown, a file being moved into place) are ignored.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise Interrupted(signum)


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app and turns usage errors (unknown option, bad value) into one line, exit 2,
    and SIGINT / SIGTERM into one line saying what was kept, exit 130 / 143."""
    previous = {sig: signal.signal(sig, _raise_interrupted) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        code = app(args=argv, prog_name="oodbench", standalone_mode=False)
    except typer.Exit as exc:
        code = exc.exit_code
    except typer.Abort:
        err_console.print("[bold red]aborted[/]")
        code = 130
    except Interrupted as stop:
        if not stop.detail:
            stop.detail = "nothing half-written was left; rerun the same command to carry on"
        err_console.print(f"[bold yellow]{escape(str(stop))}[/]", highlight=False, soft_wrap=True)
        code = stop.exit_code
    except Exception as exc:
        # click's usage errors (vendored inside newer Typer releases) carry a message and an exit code.
        if not (hasattr(exc, "format_message") and hasattr(exc, "exit_code")):
            raise
        err_console.print(f"[bold red]error:[/] {escape(exc.format_message())} (see `oodbench --help`)", highlight=False,
                          soft_wrap=True)
        code = exc.exit_code
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    sys.exit(code if isinstance(code, int) else 0)
