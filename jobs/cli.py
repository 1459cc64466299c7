"""The `render` command line."""
from __future__ import annotations

import signal
import sys

import click

from renderer import storage
from renderer.errors import ConfigError, TableError, WriteFailed
from renderer.metadata import VIDEO_MISSING, VIDEO_SIZE_DIFFERS
from renderer.paths import METADATA_FILE
from renderer.request import MAX_FRAMES
from renderer.run import PARALLEL_MODES

from .exits import table_error
from .outputs import preview, verify

EPILOG = """\b
Exit codes: 0 every row ok; 1 some rows failed or were rejected (the rest completed), or the run
stopped after repeated write failures, or its metadata could not be written; 2 usage or table-level
error (nothing rendered).
"""

# a resumed run's summary: why rows recorded ok were rendered again
RERENDER_REASONS = {VIDEO_MISSING: "their recorded video was missing",
                    VIDEO_SIZE_DIFFERS: "their video's size differed from the record (truncated or replaced)"}


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main():
    """Render videos from Parquet tables of prompts and images with diffusers pipelines on Ray.

    \b
    Quick start (CPU, seconds):
      render run examples/example.parquet --out out/     (then open out/index.html)
      render validate examples/example.parquet --gpus 8
      render preview out/ --sheet sheet.png
      render verify out/ --deep
      render models

    \b
    On a Ray cluster (see the README's "Run on a cluster"):
      render submit TABLE... --out /mnt/shared/runs/a --address http://127.0.0.1:8265
      render status ID | render logs ID --follow | render stop ID   (each with --address)
    """


# options of a run, shared by `run` and `submit` (which hands them on to the `render run` of its job)
def _attention_backend(ctx, param, value: str | None) -> str | None:
    """--attention: one of diffusers' attention backend names (read from diffusers only when given)."""
    if value is None:
        return None
    from diffusers.models.attention_dispatch import AttentionBackendName

    names = [backend.value for backend in AttentionBackendName]
    if value not in names:
        raise click.BadParameter(f"{value!r} is not a diffusers attention backend ({', '.join(names)})")
    return value


RUN_OPTIONS = (
    click.option("--model", help="Model for rows without a `model` column value: a preset (see `render models`), "
                                 "a local folder or a hub id."),
    click.option("--actors", type=click.IntRange(min=1), help="Actors per model [default: one per GPU; 1 on CPU]."),
    click.option("--gpus-per-actor", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
                 help="GPU share of each actor (0.5 puts two actors on one GPU)."),
    click.option("--gpus-per-video", type=click.IntRange(min=1), default=1, show_default=True,
                 help="Devices that render one video together (a gang of actors on one node, sharing the "
                      "transformer's tokens: diffusers' context parallelism), for the families that can (`render "
                      "models`: Wan); other models keep one device per video. --actors then counts gangs."),
    click.option("--context-parallel", type=click.Choice(PARALLEL_MODES), default="ulysses", show_default=True,
                 help="How a gang shares a video: ulysses (all-to-all over heads), ring (CUDA), ulysses_anything "
                      "(head or token counts the gang size does not divide)."),
    click.option("--collective-timeout", type=click.FloatRange(min=0, min_open=True), default=300.0,
                 show_default=True, metavar="SECONDS",
                 help="How long a gang member waits for the others in a collective before the gang is restarted."),
    click.option("--threads-per-actor", type=click.IntRange(min=1),
                 help="CPU actors: torch threads each [default: the node's CPUs shared among the actors]. The "
                      "thread count changes the order of float sums, so pin it to compare runs of different "
                      "actor counts frame for frame."),
    click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
                 help="auto: cuda when the cluster has GPUs."),
    click.option("--seed", type=int, default=0, show_default=True,
                 help="Base seed: a row without `seed` gets one derived from (this, its id)."),
    click.option("--max-attempts", type=click.IntRange(min=1), default=3, show_default=True,
                 help="Tries per row before it is recorded `failed`."),
    click.option("--no-resume", is_flag=True, help="Render every row again, even those already committed."),
    click.option("--ignore-extra", is_flag=True, help="Ignore unknown table columns instead of refusing the table."),
    click.option("--cpu-offload", is_flag=True,
                 help="Keep sub-models on the CPU until they run (CUDA: less GPU memory)."),
    click.option("--compile", "compile_", is_flag=True,
                 help="torch.compile the denoiser; each actor compiles the model's default shape before "
                      "its first row, other shapes on first use."),
    click.option("--dtype", type=click.Choice(["float16", "bfloat16"]),
                 help="Weights and activations on CUDA [default: the family's: bfloat16 for diffusion "
                      "transformers, float16 for the others]; the CPU always runs float32."),
    click.option("--attention", "attention", metavar="BACKEND", callback=_attention_backend,
                 help="diffusers' attention backend for the denoiser, e.g. native, flash, _native_cudnn, sage "
                      "(installed kernels only; a CPU has native) [default: the model's]."),
    click.option("--max-frames", type=click.IntRange(min=1), default=MAX_FRAMES, show_default=True,
                 help="Most frames a row may ask for; rows longer than the model's window render as chunks."),
    click.option("--allow-pickle", is_flag=True,
                 help="Let checkpoints without safetensors load pickle weights (.bin). Unpickling can run code: "
                      "only for checkpoints you trust."),

    click.option("--row-timeout", type=click.FloatRange(min=0, min_open=True), metavar="SECONDS",
                 help="Fail a task that executes longer than this (a row; for a long row, each chunk and the "
                      "stitch separately) as `timeout`, without retry: a hung row would hang again. Its actor is "
                      "killed and replaced, and the rows queued behind it go on. Set it well above your slowest "
                      "row, model loading excluded [default: no limit]."),
)
RUN_OPTION_NAMES = ("model", "actors", "gpus_per_actor", "gpus_per_video", "context_parallel", "collective_timeout",
                    "threads_per_actor", "device", "seed", "max_attempts",
                    "no_resume", "ignore_extra", "cpu_offload", "compile_", "max_frames", "dtype", "attention",
                    "allow_pickle", "row_timeout")


def run_options(command):
    for option in reversed(RUN_OPTIONS):
        command = option(command)
    return command


def _out_location(ctx, param, value: str) -> str:
    """--out: an object-store URI as given, or a local folder (which must not be a file)."""
    return value if storage.is_uri(value) else click.Path(file_okay=False).convert(value, param, ctx)


@main.command(epilog=EPILOG)
@click.argument("tables", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, metavar="DIR|URI", callback=_out_location,
              help="Output folder or object-store prefix (s3://bucket/prefix, gs://...): videos/*.mp4 and "
                   "metadata.parquet.")
@click.option("--address", help="Ray address of a running cluster ('auto' inside a Ray Job); "
                                "default: start an embedded local Ray.")
@run_options
def run(tables, out, address, model, actors, gpus_per_actor, gpus_per_video, context_parallel, collective_timeout,
        threads_per_actor, device, seed, max_attempts, no_resume, ignore_extra, cpu_offload, compile_, max_frames,
        dtype, attention, allow_pickle, row_timeout):
    """Render every row of TABLES into --out.

    Re-running the same command resumes: rows already rendered with the same settings are skipped.
    Rows that break a rule are recorded `rejected` with the column, value and rule; run
    `render validate` first to see them. A row with more frames than its model's window is
    rendered as overlapping chunks spread over the actors and stitched into one video
    (params chunk_mode, chunk_window, chunk_overlap; see the README's "Long videos").

    \b
    Examples:
      render run examples/example.parquet --out out/
      render run prompts.parquet --out runs/a --model tiny-animatediff --actors 2
      render run rows.parquet --out runs/b --device cuda --model stabilityai/stable-video-diffusion-img2vid-xt
      render run rows.parquet --out runs/c --model t2v-zero:/models/sd15 --cpu-offload
      render run long.parquet --out runs/d --model tiny-animatediff --actors 4 --max-frames 4096
      render run s3://bucket/in/rows.parquet --out s3://bucket/runs/e --model tiny-animatediff
    """
    from cluster.connect import connect
    from cluster.submit import auth_warning
    from renderer.options import LoadOptions
    from renderer.run import RunConfig, check_rows, run as run_all

    load = LoadOptions(cpu_offload=cpu_offload, compile=compile_, dtype=dtype, allow_pickle=allow_pickle,
                       attention_backend=attention)
    config = RunConfig(tables=tables, out=out, model=model, actors=actors, gpus_per_actor=gpus_per_actor,
                       threads_per_actor=threads_per_actor, device=device, seed=seed, max_attempts=max_attempts,
                       resume=not no_resume, ignore_extra=ignore_extra, max_frames=max_frames,
                       row_timeout=row_timeout, gpus_per_video=gpus_per_video, context_parallel=context_parallel,
                       collective_timeout=collective_timeout, load=load)
    # before Ray starts
    try:
        checked = check_rows(config.tables, config.model, config.seed, config.ignore_extra, config.max_frames)
    except TableError as exc:
        table_error(exc)
    if warning := auth_warning(address):
        click.echo(warning, err=True)
    # a stopped Ray Job: record what finished, then exit
    signal.signal(signal.SIGTERM, _stop_on_sigterm)
    try:
        summary = run_all(config, checked, connect=lambda: connect(address, actors))
    except ConfigError as exc:
        table_error(exc)
    except WriteFailed as exc:
        # the final metadata write: what this run rendered is not recorded
        click.echo(f"error: the run's records could not be saved: {exc}. The previous {METADATA_FILE} is intact; "
                   "run the same command again once the output is writable (rows not recorded render again).",
                   err=True)
        sys.exit(1)
    _print_summary(summary, out)
    sys.exit(summary.exit_code)


@main.command(epilog=EPILOG)
@click.argument("tables", nargs=-1, required=True)
@click.option("--out", required=True, help="Output folder or URI as the cluster sees it (shared storage).")
@click.option("--address", required=True, help="The cluster's dashboard, e.g. http://127.0.0.1:8265.")
@click.option("--job-id", help="Submission id [default: derived from the tables, --out and the options].")
@click.option("--env", "env_vars", multiple=True, metavar="KEY=VALUE",
              help="Environment of the job, e.g. HF_HOME=/mnt/shared/hf or HF_HUB_OFFLINE=1 (repeatable).")
@click.option("--pip", multiple=True, metavar="REQUIREMENT",
              help="Extra requirement installed for the job (repeatable).")
@run_options
@click.pass_context
def submit(ctx, tables, out, address, job_id, env_vars, pip, **run_opts):
    """Submit the run of TABLES as a Ray Job on the cluster at --address.

    The job runs `render run TABLES --out OUT --address auto` with the same options, from this
    project's code shipped as the job's working directory. The same run always gets the same id,
    so submitting it again while it runs (or after it succeeded) is refused; after `render stop` or a
    failure, submitting it again resumes: committed rows are skipped.

    \b
    Examples:
      render submit /mnt/shared/prompts.parquet --out /mnt/shared/runs/a --address http://127.0.0.1:8265 \\
          --model stabilityai/stable-video-diffusion-img2vid-xt --env HF_HOME=/mnt/shared/hf --env HF_HUB_OFFLINE=1
      render logs render-0123456789ab --follow
    """
    from cluster.submit import Submission, SubmitError, auth_warning, submit as submit_job

    env = dict(_key_value(item) for item in env_vars)
    submission = Submission(tuple(tables), out, address, _run_args(ctx, run_opts), env, tuple(pip))
    if warning := auth_warning(address):
        click.echo(warning, err=True)
    try:
        submitted = submit_job(submission, job_id)
    except SubmitError as exc:
        table_error(exc)
    click.echo(f"submitted {submitted}: follow it with `render logs {submitted} --follow --address {address}`")


@main.command()
@click.argument("job_id")
@click.option("--address", required=True, help="The cluster's dashboard, e.g. http://127.0.0.1:8265.")
def status(job_id, address):
    """Show a submitted run's status."""
    from cluster.submit import status as job_status

    info = _job_verb(job_status, address, job_id)
    click.echo(f"{info['id']}: {info['status']}" + (f" ({info['message']})" if info["message"] else ""))


@main.command()
@click.argument("job_id")
@click.option("--address", required=True, help="The cluster's dashboard, e.g. http://127.0.0.1:8265.")
@click.option("--follow", is_flag=True, help="Keep printing until the job ends.")
def logs(job_id, address, follow):
    """Print a submitted run's log."""
    from cluster.submit import logs as job_logs

    _job_verb(job_logs, address, job_id, follow, write=lambda text: click.echo(text, nl=False))


@main.command()
@click.argument("job_id")
@click.option("--address", required=True, help="The cluster's dashboard, e.g. http://127.0.0.1:8265.")
def stop(job_id, address):
    """Stop a submitted run; what it committed stays, and submitting it again resumes."""
    from cluster.submit import stop as job_stop

    stopped = _job_verb(job_stop, address, job_id)
    click.echo(f"{job_id}: {'stopping' if stopped else 'not running'}")


@main.command(epilog=EPILOG)
@click.argument("tables", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--model", help="Model for rows without a `model` value.")
@click.option("--ignore-extra", is_flag=True, help="Ignore unknown table columns.")
@click.option("--max-frames", type=click.IntRange(min=1), default=MAX_FRAMES, show_default=True,
              help="Most frames a row may ask for.")
@click.option("--gpus", type=click.IntRange(min=1), default=1, show_default=True,
              help="GPUs the estimate's wall time is for.")
def validate(tables, model, ignore_extra, max_frames, gpus):
    """Check TABLES and every row without starting Ray; print what would be rejected and the estimated GPU time.

    The estimate comes from H100 runs measured with default options (see the README's estimate section): per
    model its GPU time, whether that figure is measured or scaled and how far off a scaled one may be; then the
    total, and the wall time on --gpus GPUs.
    """
    from renderer.estimate import estimate, report
    from renderer.run import check_rows

    try:
        checked = check_rows(tables, model, ignore_extra=ignore_extra, max_frames=max_frames)
    except TableError as exc:
        table_error(exc)
    for record in checked.rejected:
        click.echo(f"rejected {record['id']!r}: {record['error']}")
    click.echo(f"{len(checked.ids)} rows: {len(checked.requests)} ok, {len(checked.rejected)} rejected")
    for line in report(estimate(checked.requests), gpus):
        click.echo(line)
    sys.exit(1 if checked.rejected else 0)


@main.command()
def models():
    """List model presets and families: inputs, native window, knobs and real checkpoints."""
    from renderer.families.registry import FAMILIES, VARIANTS

    for family in FAMILIES.values():
        click.secho(f"{family.name}  ({family.pipeline_class})", bold=True)
        click.echo(f"  presets:    tiny-{family.name}, random-{family.name}")
        for variant in (v for v in VARIANTS if v.name == family.name):
            click.echo(f"              tiny-{variant.preset}, random-{variant.preset}  ({variant.pipeline_class}, "
                       f"{variant.window} frames, {variant.defaults.width}x{variant.defaults.height})")
        click.echo(f"  inputs:     {', '.join(family.inputs)}")
        click.echo(f"  window:     {family.window} frames")
        gang = "several (--gpus-per-video: context parallelism)" if family.context_parallel else "1"
        click.echo(f"  gpus/video: {gang}")
        d = family.defaults
        click.echo(f"  defaults:   {d.num_frames} frames, {d.width}x{d.height}, {d.num_inference_steps} steps, "
                   f"{d.fps} fps, guidance {d.guidance_scale}")
        for key, param in family.allowed_params().items():
            choices = f" ({'|'.join(param.choices)})" if param.choices else ""
            click.echo(f"  params.{key}: {param.kind.__name__}{choices} - {param.help}")
        for checkpoint in family.checkpoints:
            click.echo(f"  checkpoint: {checkpoint}")


def _run_args(ctx, values: dict) -> tuple[str, ...]:
    """The run options given to `submit`, as `render run` arguments (those left at their default omitted)."""
    args = []
    for param in ctx.command.params:
        value = values.get(param.name)
        if param.name not in RUN_OPTION_NAMES or value is None or value == param.default or value is False:
            continue
        args += [param.opts[0]] if value is True else [param.opts[0], str(value)]
    return tuple(args)


def _key_value(item: str) -> tuple[str, str]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise click.BadParameter(f"{item!r}: expected KEY=VALUE", param_hint="--env")
    return key, value


def _job_verb(verb, address, job_id, *args, **kwargs):
    from cluster.submit import SubmitError

    try:
        return verb(address, job_id, *args, **kwargs)
    except SubmitError as exc:
        table_error(exc)
    except RuntimeError as exc:
        # the job client's "job does not exist" and the like
        table_error(exc)


def _stop_on_sigterm(signum, frame):
    raise SystemExit(128 + signum)


def _print_summary(summary, out: str) -> None:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
    skipped = f" ({summary.skipped} already rendered, skipped)" if summary.skipped else ""
    click.echo(f"done: {counts}{skipped} -> {storage.join(out, METADATA_FILE)}")
    for reason, rows in sorted(summary.rerendered.items()):
        click.echo(f"  {rows} re-rendered: {RERENDER_REASONS[reason]}")
    for row_id, error in summary.errors:
        click.echo(f"  {row_id!r}: {error}")
    if summary.gallery:
        click.echo(f"gallery: {summary.gallery}")
    if summary.stopped:
        click.echo(f"stopped early: {summary.stopped}. Free space (or fix the output), then run the same command "
                   "again: it renders the rows left.")


# the commands that look at a run's output
main.add_command(preview)
main.add_command(verify)

if __name__ == "__main__":
    main()
