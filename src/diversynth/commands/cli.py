"""The `diversynth` command line: `run` for the whole pipeline, one command per stage."""

from __future__ import annotations

import contextlib
import errno
import functools
import json
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.markup import escape

from diversynth.config import RunConfig, load_config
from diversynth.data.userfiles import file_problem, folder_problem
from diversynth.errors import DiversynthError, shown
from diversynth.pipeline import STAGE_NAMES, brief, parse_stage_list, run_stages
from diversynth.run.progress import clock, console
from diversynth.run.rundir import RunDir, write_json


class _App(typer.Typer):
    """A typer app whose commands end in one line on a fault they did not catch
    themselves: a DiversynthError's message and exit code; an OSError (a full disk, a path
    under a file, a folder not writable) with exit 1. Anything else is a bug and keeps its
    traceback."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """The command line as a program: a mistake in the options (a value out of range,
        an unknown option) is one `error:` line too, not click's usage box."""
        if kwargs.get("standalone_mode") is False:
            return super().__call__(*args, **kwargs)
        try:
            code = super().__call__(*args, **{**kwargs, "standalone_mode": False})
        except typer.Abort:
            code = 1
        except typer.TyperException as exc:  # typer's click: a usage error and its kin
            if type(exc).__name__ == "NoArgsIsHelpError":
                exc.show()  # type: ignore[attr-defined]  # typer's private _click subclass: the help
            else:
                ctx = getattr(exc, "ctx", None)
                where = f"{ctx.command_path}: " if ctx is not None else ""
                message = exc.format_message()
                for line in f"{where}{message}".splitlines():
                    console.print(f"[red]error:[/red] {escape(line)}", highlight=False,
                                  soft_wrap=True)  # fmt: skip
            code = getattr(exc, "exit_code", 2)
        sys.exit(code if isinstance(code, int) else 0)

    def command(self, *args: Any, **kwargs: Any) -> Callable[[Callable[..., Any]], Any]:
        register = super().command(*args, **kwargs)

        def decorator(func: Callable[..., Any]) -> Any:
            @functools.wraps(func)  # typer reads the signature through __wrapped__
            def one_line(*call_args: Any, **call_kwargs: Any) -> Any:
                try:
                    return func(*call_args, **call_kwargs)
                except DiversynthError as exc:
                    _fail(str(exc), exc.exit_code)
                except OSError as exc:
                    _fail(_os_error(exc), code=1)

            return register(one_line)

        return decorator


def _os_error(exc: OSError, where: object = None) -> str:
    """An OSError as a line: a full disk says the work is kept and how to go on."""
    place = exc.filename or where or "writing"
    if exc.errno == errno.ENOSPC:
        return (f"the disk is full ({place}): the work finished so far is kept; free some "
                "space and run the same command again to go on")  # fmt: skip
    return f"{exc.strerror or exc} ({place})"


# the hub libraries' own warnings (a retry, a long sequence) are noise beside the one line
# a failure gets; set before they are imported
os.environ.setdefault("HF_HUB_VERBOSITY", "error")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

app = _App(
    help="Diversified synthetic images for image-classifier training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ConfigArg = Annotated[Path, typer.Argument(help="YAML config (see configs/).", show_default=False)]


def _folder(value: str | None) -> Path | None:
    """A folder option as given: an empty value is refused rather than read as the
    current directory (which is what Path('') means)."""
    if value is not None and not value.strip():
        _fail("--out: give a folder (got an empty value)")
    return None if value is None else Path(value)


OutOpt = Annotated[
    str, typer.Option("--out", "-o", help="Run directory (created or resumed).", callback=_folder)
]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", help="Override a config value: key.path=value (YAML value). Repeatable."),
]


# characters of an error line at most: messages cut the values they show (errors.shown);
# this catches one that does not, from a library say
MAX_LINE = 1000


def _fail(message: str, code: int = 2) -> NoReturn:
    for line in message.splitlines()[:50]:
        if len(line) > MAX_LINE:
            line = f"{line[:MAX_LINE]}... ({len(line):,} characters)"
        console.print(f"[red]error:[/red] {escape(line)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _place(path: Path, what: str) -> None:
    """Refuse a path whose folders cannot be made (one of them is a file), before any
    work whose result would have nowhere to go."""
    problem = folder_problem(path)
    if problem:
        _fail(f"{what}: cannot write {str(path)!r}: {problem}")


# a classifier checkpoint: ViT-g/14 in float32 is 4 GB
CHECKPOINT_BYTES = 16 << 30


def _new_file(path: Path, what: str, force: bool, suffix: str = "") -> None:
    """A file the command writes where the user said: never a folder, never a file that
    is there unless `force` (a config named by mistake would become a checkpoint)."""
    if path.is_dir():
        _fail(f"{what}: {str(path)!r} is a folder; name the file to write")
    _place(path, what)
    if suffix and path.suffix != suffix:
        _fail(f"{what}: {str(path)!r} does not end in {suffix}")
    if (path.exists() or path.is_symlink()) and not force:
        _fail(f"{what}: {str(path)!r} exists; give a new file, or --force to replace it")
    folder = path.parent
    if folder.is_dir():  # a file can be made there (a folder of /proc cannot hold one)
        try:
            tempfile.TemporaryFile(dir=folder).close()
        except OSError as exc:
            _fail(f"{what}: cannot write in {str(folder)!r}: {exc.strerror or exc}")


def _outside_runs(out: Path, runs: list[RunDir]) -> None:
    """A report folder that is no run's own folder: a run directory, or a folder inside
    one other than its report/, holds the stages' files (RUN/leaks is the leaks stage's)."""
    target = out.resolve()
    if RunDir(out).is_run():
        _fail(f"--out: {str(out)!r} is a run directory; without --out its report goes to "
              "RUN/report")  # fmt: skip
    for run in runs:
        root = run.root.resolve()
        if target.is_relative_to(root) and target != run.report_dir.resolve():
            _fail(f"--out: {str(out)!r} is inside the run {str(run.root)!r}, where its stages "
                  "write; give a folder outside it (or leave --out out: RUN/report)")  # fmt: skip


def _existing_run(path: str | Path) -> RunDir:
    """A `--run` folder that must already be a run directory."""
    run = RunDir(path)
    if not str(path).strip() or not run.is_run():
        _fail(f"--run: {str(path)!r} is not a diversynth run directory")
    return run


def _load(config: Path, overrides: list[str] | None) -> RunConfig:
    return load_config(config, overrides or [])


MaxShardsOpt = Annotated[
    int | None,
    typer.Option(min=1, help="Generate at most this many shards now; rerun to go on."),
]


AllowVersionOpt = Annotated[
    bool,
    typer.Option(
        "--allow-version-change",
        help="Keep finished shards or a saved training state made with other library "
        "versions, device or model files (recorded in the run).",
    ),
]


def _run(config: Path, out: str | Path, stages: list[str], force: list[str],
         overrides: list[str] | None, max_shards: int | None = None,
         allow_version_change: bool = False, break_lock: bool = False) -> None:  # fmt: skip
    cfg = _load(config, overrides)
    options = {"max_shards": max_shards, "allow_version_change": allow_version_change,
               "break_lock": break_lock}  # fmt: skip
    try:
        run_stages(cfg, RunDir(out), stages=stages, force=force, options=options)
    except OSError as exc:  # disk full, permissions: the run directory keeps finished work
        _fail(_os_error(exc, out), code=1)


@app.command()
def run(
    config: ConfigArg,
    out: OutOpt,
    stages: Annotated[
        str | None,
        typer.Option(help=f"Comma-separated stages to run (default all: {','.join(STAGE_NAMES)})."),
    ] = None,
    force: Annotated[
        list[str] | None, typer.Option(help="Rerun this stage and the stages after it. Repeatable.")
    ] = None,
    set_: SetOpt = None,
    max_shards: MaxShardsOpt = None,
    allow_version_change: AllowVersionOpt = False,
    break_lock: Annotated[
        bool,
        typer.Option(
            "--break-lock",
            help="Take over the run's lock from a process of another host that is down, "
            "without waiting for its lease to lapse (a process of this host is never "
            "taken over).",
        ),
    ] = False,
) -> None:
    """Run the pipeline: classes, prompts, generate, train, evaluate, report.

    Stages whose inputs and settings are unchanged are skipped; a rerun resumes where an
    interrupted run stopped.
    """
    selected = parse_stage_list(stages)
    forced = parse_stage_list(",".join(force), "--force") if force else []
    _run(config, out, selected, forced, set_, max_shards, allow_version_change, break_lock)


@app.command()
def sweep(
    sweep_file: Annotated[
        Path | None,
        typer.Argument(
            help="Sweep file: a base config and the axes to vary (see docs/sweeps.md).",
            show_default=False,
        ),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option("--out", "-o", callback=_folder, help="Sweep folder (created or resumed)."),
    ] = None,
    parallel: Annotated[
        int | None,
        typer.Option(min=1, max=1024, help="Trials at once (default: the file's `parallel`, 1)."),
    ] = None,
    yes: Annotated[
        bool,
        typer.Option("--yes", help="Run a sweep of more trainings than diversynth runs unasked."),
    ] = False,
    status_of: Annotated[
        str | None,
        typer.Option(
            "--status", callback=_folder, help="Show each trial of a sweep folder, then stop."
        ),
    ] = None,
) -> None:
    """Train a grid of trials (synthetic scale x strategy x aux BN x seed ...) on one pool
    of generated images: the stages before training run once, each training once."""
    from diversynth.commands.sweep import command

    if status_of is not None:
        command.show_status(Path(status_of))
        return
    if sweep_file is None or out is None:
        _fail("sweep: give a sweep file and --out DIR (or --status DIR)")
        return
    command.run_command(sweep_file, Path(out), parallel, yes)


def _torchrun_group() -> contextlib.AbstractContextManager[object]:
    """Under torchrun (`torchrun --nproc_per_node N -m diversynth train ...`), the process
    group it describes: every process trains on its slice of each batch (DDP)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return contextlib.nullcontext()
    from diversynth.stages.train.distributed import process_group  # torch: only when training

    return process_group()


def _stage_command(name: str, summary: str, group: typer.Typer = app, as_name: str = "") -> None:
    def command(
        config: ConfigArg,
        out: OutOpt,
        force: Annotated[bool, typer.Option(help="Rerun even if up to date.")] = False,
        set_: SetOpt = None,
        allow_version_change: AllowVersionOpt = False,
    ) -> None:
        with _torchrun_group() if name == "train" else contextlib.nullcontext():
            _run(config, out, [name], [name] if force else [], set_,
                 allow_version_change=allow_version_change)  # fmt: skip

    command.__doc__ = (
        f"{summary}\n\nRuns only this stage; the stages it reads must have run in the same "
        "run directory."
    )
    group.command(name=as_name or name)(command)


classes_app = _App(
    help="Class lists and the names prompts use: run the stage, or explain one decision.",
    no_args_is_help=True,
)
app.add_typer(classes_app, name="classes")
_stage_command(
    "classes",
    "Resolve the class list into the names prompts use (classes.jsonl).",
    classes_app,
    "run",
)


@classes_app.command("show")
def classes_show(
    key: Annotated[str, typer.Argument(help="Class index, wnid, or raw name.")],
    run_dir: Annotated[Path, typer.Option("--run", help="Run directory.")],
) -> None:
    """Explain how one class's name was chosen: every candidate, its score, the reason."""
    from diversynth.stages.classes.show import find_class, render_class

    run = _existing_run(run_dir)
    if not run.classes.is_file():
        _fail(f"--run: no classes.jsonl in {str(run_dir)!r} (run the classes stage first)")
    render_class(find_class(run, key))


_stage_command("prompts", "Write the prompts and per-image seeds (prompts.jsonl).")


@app.command(
    "torchrun",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True,
                      "help_option_names": []},
    add_help_option=False,
)  # fmt: skip
def torchrun_cmd(ctx: typer.Context) -> None:
    """torchrun, with restarts that survive a lost node (DDP training).

    `diversynth torchrun --nnodes 2 --nproc-per-node 8 --max-restarts 3 --rdzv-backend c10d
    --rdzv-endpoint HEAD:29500 -m diversynth train CONFIG --out RUN`. Every option is
    torchrun's (`--help` lists them); it sets TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1 (see
    docs/multi-node.md)."""
    from diversynth.stages.train.launch import torchrun

    raise typer.Exit(torchrun(list(ctx.args)))


@app.command()
def generate(
    config: Annotated[Path | None, typer.Argument(help="YAML config.", show_default=False)] = None,
    out: Annotated[
        str | None, typer.Option("--out", "-o", help="Run directory.", callback=_folder)
    ] = None,
    force: Annotated[bool, typer.Option(help="Regenerate every shard.")] = False,
    set_: SetOpt = None,
    max_shards: MaxShardsOpt = None,
    status_: Annotated[
        bool, typer.Option("--status", help="Only report progress (with --run); starts nothing.")
    ] = False,
    run_dir: Annotated[Path | None, typer.Option("--run", help="Run directory (--status).")] = None,
    allow_version_change: AllowVersionOpt = False,
) -> None:
    """Generate images into WebDataset shards and manifest.parquet.

    Runs only this stage; classes and prompts must have run in the same run directory.
    `--status --run DIR` prints shards done of total, images, rate and ETA, from the files
    alone (it works while another process generates).
    """
    if status_:
        from diversynth.stages.generate.status import format_status, generation_status

        target = run_dir or out
        if target is None:
            _fail("--status needs --run DIR")
            return
        status = generation_status(_existing_run(target))
        console.print(format_status(status), soft_wrap=True)
        return
    if config is None or out is None:
        _fail("give CONFIG and --out DIR (or --status --run DIR)")
        return
    _run(config, out, ["generate"], ["generate"] if force else [], set_, max_shards,
         allow_version_change)  # fmt: skip


_stage_command("leaks", "Find synthetic images too close to an evaluation image (leaks.json).")
_stage_command("train", "Train a classifier on real + synthetic images.")
_stage_command("evaluate", "Evaluate the trained classifier (eval.json).")


@app.command()
def report(
    runs: Annotated[
        list[Path], typer.Option("--run", help="Run directory; repeat it to compare runs.")
    ],
    out: Annotated[
        Path | None,
        typer.Option(
            "--out", "-o", help="Site folder (default RUN/report; needed for several runs)."
        ),
    ] = None,
    serve: Annotated[bool, typer.Option(help="Serve the site on 127.0.0.1 afterwards.")] = False,
    port: Annotated[
        int, typer.Option(min=0, max=65535, help="Port for --serve (0: any free port).")
    ] = 8000,
    force: Annotated[
        bool, typer.Option(help="Write into an --out folder that holds other files.")
    ] = False,
) -> None:
    """Write the HTML report of a run (overview and class pages), or compare several runs.

    The site opens from disk; thumbnails already made are kept between builds.
    """
    from diversynth.config import ReportConfig
    from diversynth.stages.report.facts import load_run
    from diversynth.stages.report.owned import claim_site
    from diversynth.stages.report.site import build_comparison, build_run_site

    if len(runs) > 1 and out is None:
        _fail("--out: give a folder for the comparison of several runs")
    dirs = [_existing_run(run) for run in runs]
    if out is not None:
        _place(out, "--out")
        _outside_runs(out, dirs)
    if out is not None:
        claim_site(out, "--out", force)
    else:
        dirs[0].check_confined()  # RUN/report/ is written
    try:
        with contextlib.ExitStack() as locks:  # no stage rewrites a run while it is read
            for run in dirs:  # runs only read (the site goes to --out) are shared
                locks.enter_context(run.lock(shared=out is not None))
            facts = [load_run(run.root) for run in dirs]
            settings = ReportConfig.model_validate(facts[0].config.get("report") or {})
            if len(facts) == 1:
                site = out or facts[0].run.report_dir
                summary = build_run_site(facts[0], site, settings)
            else:
                assert out is not None  # refused above for several runs
                site = out
                summary = build_comparison(facts, site, settings)
    except OSError as exc:  # a read-only or full disk
        hint = "" if out is not None else "; --out DIR writes it elsewhere"
        _fail(f"report: cannot write the site: {exc.strerror or exc} "
              f"({exc.filename or out or runs[0]}){hint}", code=1)  # fmt: skip
        return
    console.print(f"report: {escape(str(site / 'index.html'))} ({escape(json.dumps(summary))})")
    if serve:
        from diversynth.stages.report.serve import make_server

        try:
            server = make_server(site, port)
        except OSError as exc:  # taken by another program, or not ours to bind
            _fail(f"--port: cannot serve on 127.0.0.1:{port}: {exc.strerror or exc}; give "
                  "another port, or --port 0 for any free one", code=1)  # fmt: skip
            return
        console.print(f"serving on http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.server_close()


@app.command("evaluate-model")
def evaluate_model(
    config: ConfigArg,
    checkpoint: Annotated[
        Path | None, typer.Option(help="A diversynth or imported .safetensors checkpoint.")
    ] = None,
    model: Annotated[str | None, typer.Option(help="A timm model name.")] = None,
    pretrained: Annotated[bool, typer.Option(help="With --model: timm's weights.")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="Write the results here.")] = None,
    set_: SetOpt = None,
    force: Annotated[bool, typer.Option(help="Replace the --json file if it exists.")] = False,
) -> None:
    """Evaluate any checkpoint or timm model on the config's test split (if it has a data
    section) and its evaluate.sets.

    Class indices follow the config's class list (for imagenet1k, the order timm's
    ImageNet models use). Nothing is written to a run directory.
    """
    from diversynth.data.classes.catalog import load_classes
    from diversynth.models.classifier import check_timm_name
    from diversynth.run.artifacts.records import ClassIdentity
    from diversynth.stages.evaluate.stage import evaluate_model

    cfg = _load(config, set_)
    if (checkpoint is None) == (model is None):
        _fail("give one of --checkpoint PATH or --model NAME")
    if cfg.data is None and not cfg.evaluate.sets:
        _fail("nothing to evaluate on: give a data section or evaluate.sets")
    if checkpoint is not None:
        problem = file_problem(checkpoint, CHECKPOINT_BYTES)
        if problem:
            _fail(f"--checkpoint: {str(checkpoint)!r} {problem}")
    if json_out is not None:
        _new_file(json_out, "--json", force)
    if model is not None:
        check_timm_name(model)
    classes = [ClassIdentity(index=c.index, wnid=c.wnid, raw_name=c.raw_name)
               for c in load_classes(cfg.classes)]  # fmt: skip
    results = evaluate_model(cfg, classes, checkpoint, model, pretrained)
    if json_out is not None:
        write_json(json_out, results)


@app.command("make-tiny-models")
def make_tiny_models_cmd(
    out: Annotated[Path, typer.Argument(help="Folder to write the kit into.")],
    force: Annotated[bool, typer.Option(help="Rebuild even if the kit is there.")] = False,
    arch: Annotated[
        str | None,
        typer.Option(
            help="Instead, one tiny pipeline of this architecture into OUT "
            "(sd15, sd2, sdxl, sdxl-turbo, sd3, pixart-sigma, flux-schnell, sana)."
        ),
    ] = None,
) -> None:
    """Build tiny random-weight models (diffusers pipeline, open_clip) for offline runs."""
    _place(out, "OUT")
    if arch is not None:
        from diversynth.testing.tiny_pipelines import ARCHITECTURES, save_tiny_pipeline

        if arch not in ARCHITECTURES:
            _fail(f"--arch: no architecture {arch!r}; choose from {', '.join(ARCHITECTURES)}")
        console.print(f"{arch}: {save_tiny_pipeline(arch, out)}")
        return
    from diversynth.testing.tiny_models import make_tiny_models

    paths = make_tiny_models(out, force=force)
    for kind, path in paths.items():
        console.print(f"{kind}: {path}")


@app.command("import-weights")
def import_weights_cmd(
    name: Annotated[str, typer.Argument(help="Which weights: efficientnet-lite0.")],
    out: Annotated[Path, typer.Argument(help="The safetensors checkpoint to write.")],
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Convert real pretrained weights that install offline into a safetensors checkpoint."""
    from diversynth.stages.train.import_weights import IMPORTERS

    if name not in IMPORTERS:
        _fail(f"import-weights: unknown weights {shown(name)} (known: {', '.join(IMPORTERS)})")
    _new_file(out, "OUT", force, ".safetensors")
    meta = IMPORTERS[name](out)
    console.print(f"{escape(name)}: {escape(str(out))} ({meta['model']})")


@app.command("env")
def env_cmd(
    config: Annotated[
        Path | None, typer.Argument(help="Also check what this config needs.", show_default=False)
    ] = None,
    set_: SetOpt = None,
    run_dir: Annotated[Path | None, typer.Option("--run", help="Report free disk here.")] = None,
) -> None:
    """Versions, CPU kernels, GPUs, the LLM (one token), Chromium, offline assets and free
    disk, on one screen for a bug report. Exits 1 if a part the config needs is broken
    (with no config: a part the offline demo needs)."""
    from diversynth.commands.env import collect, render

    parts = collect(config, set_ or [], run_dir)
    print(render(parts))
    if any(part.fails for part in parts):
        raise typer.Exit(1)


@app.command("plan")
def plan_cmd(
    config: ConfigArg,
    set_: SetOpt = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
) -> None:
    """What the config will cost, before any GPU time: images, prompts, shards, disk, LLM
    requests and tokens, FLOPs an image (counted on the model's architecture, no weights)
    and GPU-hours per card."""
    from diversynth.commands.plan import make_plan, render

    if _is_sweep_file(config):
        _plan_sweep(config, set_, as_json)
        return
    cfg = _load(config, set_)
    plan = make_plan(cfg)
    if as_json:
        print(json.dumps(plan.to_json(), indent=2))
    else:  # the plan is the command's output: stdout (progress and errors go to stderr)
        from rich.console import Console

        Console().print(render(plan, cfg.name))


def _is_sweep_file(path: Path) -> bool:
    """A YAML file with a `vary` key at the top (read cheaply; errors are the loaders':
    a FIFO, a device or a huge file is left to them, never opened here)."""
    if file_problem(path, 4 << 20) is not None:
        return False
    try:
        with path.open() as handle:
            return any(line.startswith("vary:") for line in handle.read(1 << 22).splitlines())
    except (OSError, UnicodeDecodeError):
        return False


def _plan_sweep(path: Path, set_: list[str] | None, as_json: bool) -> None:
    from rich.console import Console

    from diversynth.commands.sweep.plan import plan_sweep, render_sweep
    from diversynth.commands.sweep.spec import expand, read_sweep

    if set_:
        _fail("--set: a sweep file takes its settings under `set:`")
    sweep = expand(read_sweep(path), path)
    pools, trainings = plan_sweep(sweep)
    if as_json:
        print(
            json.dumps(
                {
                    "pools": {k: p.to_json() for k, p in pools.items()},
                    "trainings": {k: vars(c) for k, c in trainings.items()},
                },
                indent=2,
            )
        )
        return
    out = Console()
    if not out.is_terminal:  # a file or a pipe: rows of four cards, unwrapped
        out = Console(width=120)
    out.print(render_sweep(sweep, pools, trainings))


@app.command("recipes")
def recipes_cmd() -> None:
    """The named training recipes (`--set train.recipe=NAME`) and what each sets."""
    from rich.table import Table

    from diversynth.models.recipes import RECIPES

    table = Table("recipe", "settings (a key the config sets wins)", title="training recipes")
    for name, settings in RECIPES.items():
        table.add_row(name, ", ".join(f"{key}={value}" for key, value in settings.items()))
    console.print(table)


@app.command()
def verify(
    run_dir: Annotated[Path | None, typer.Option("--run", help="Run directory.")] = None,
    data: Annotated[
        Path | None,
        typer.Option(help="A config: decode every image of its real data and evaluate.sets."),
    ] = None,
    set_: SetOpt = None,
    workers: Annotated[
        int | None,
        typer.Option(
            min=1, max=1024, help="Threads decoding (--data; default: the cores, at most 32)."
        ),  # fmt: skip
    ] = None,
) -> None:
    """Hash and parse every output of every finished stage against what the stage wrote,
    naming each damaged file (--run); or decode every real image a config reads, naming
    each that cannot be read (--data). Exits 1 if any is damaged (`run` then makes damaged
    run files again; `data.skip_unreadable: true` leaves unreadable images out)."""
    if (run_dir is None) == (data is None):
        _fail("verify: give --run RUN (a run's files) or --data CONFIG (its real images)")
    if data is not None:
        from diversynth.data.scan import verify_data

        cfg = _load(data, set_)
        bad = verify_data(cfg, workers)
        if bad:
            raise typer.Exit(1)
        return
    from diversynth.pipeline import STAGES

    assert run_dir is not None
    run = _existing_run(run_dir)
    damaged: list[str] = []
    for stage in STAGES:
        state = run.read_state(stage.name)
        if state is None or not state.files:
            continue
        found = stage.verify(run.home(stage.name), state)
        damaged += [f"{stage.name}: {damage}" for damage in found]
        if not found:
            console.print(f"{stage.name}: {len(state.files)} file(s) as written", highlight=False)
    from diversynth.run.artifacts.shards import temp_files

    shards = run.home("generate").shards
    for name in temp_files(shards):
        console.print(f"{escape(str(shards / name))}: left by an interrupted worker (not "
                      "damage: the next `diversynth run` removes it)", highlight=False,
                      soft_wrap=True)  # fmt: skip
    for line in damaged:
        console.print(f"[red]damaged:[/red] {escape(line)}", highlight=False, soft_wrap=True)
    if damaged:
        console.print(f"`diversynth run {escape(str(run.config))} --out {escape(str(run.root))}` "
                      "makes them again", highlight=False, soft_wrap=True)  # fmt: skip
        raise typer.Exit(1)


@app.command()
def status(run_dir: Annotated[Path, typer.Option("--run", help="Run directory.")]) -> None:
    """Show which stages of a run have finished, when, how long they took, and their
    main figures (each stage's whole summary: RUN/.state/STAGE.json)."""
    import datetime
    import time

    from rich.table import Table

    run = _existing_run(run_dir)
    table = Table("stage", "state", "finished", "took", "summary")
    for name in STAGE_NAMES:
        state = run.read_state(name)
        if state is None:
            table.add_row(name, "not run", "", "", "")
            continue
        when = datetime.datetime.fromtimestamp(state.finished_at).strftime("%Y-%m-%d %H:%M")
        when += f" ({_ago(time.time() - state.finished_at)})"
        table.add_row(name, "done", when, clock(state.seconds), brief(state.summary, 90))
    console.print(table, markup=False)


def _ago(seconds: float) -> str:
    for unit, size in (("day", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            count = int(seconds // size)
            return f"{count} {unit}{'s' if unit == 'day' and count > 1 else ''} ago"
    return "just now"


def main() -> None:  # pragma: no cover
    sys.exit(app())
