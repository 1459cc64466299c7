"""The `render` command line."""
from __future__ import annotations

import sys
from pathlib import Path

import click

from renderer.errors import ConfigError, TableError
from renderer.request import MAX_FRAMES

EPILOG = """\b
Exit codes: 0 every row ok; 1 some rows failed or were rejected (the rest completed);
2 usage or table-level error (nothing rendered).
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
def main():
    """Render videos from Parquet tables of prompts and images with diffusers pipelines on Ray.

    \b
    Quick start (CPU, seconds):
      render run examples/example.parquet --out out/
      render validate examples/example.parquet
      render models
    """


@main.command(epilog=EPILOG)
@click.argument("tables", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder: videos/*.mp4 and metadata.parquet.")
@click.option("--model", help="Model for rows without a `model` column value: a preset (see `render models`), "
                              "a local folder or a hub id.")
@click.option("--actors", type=click.IntRange(min=1), help="Actors per model [default: one per GPU; 1 on CPU].")
@click.option("--gpus-per-actor", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
              help="GPU share of each actor (0.5 puts two actors on one GPU).")
@click.option("--device", type=click.Choice(["auto", "cpu", "cuda"]), default="auto", show_default=True,
              help="auto: cuda when the cluster has GPUs.")
@click.option("--address", help="Ray address of a running cluster ('auto' inside a Ray Job); "
                                "default: start an embedded local Ray.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Base seed: a row without `seed` gets one derived from (this, its id).")
@click.option("--max-attempts", type=click.IntRange(min=1), default=3, show_default=True,
              help="Tries per row before it is recorded `failed`.")
@click.option("--no-resume", is_flag=True, help="Render every row again, even those already committed.")
@click.option("--ignore-extra", is_flag=True, help="Ignore unknown table columns instead of refusing the table.")
@click.option("--cpu-offload", is_flag=True, help="Keep sub-models on the CPU until they run (CUDA: less GPU memory).")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the denoiser (slow first row per shape).")
@click.option("--max-frames", type=click.IntRange(min=1), default=MAX_FRAMES, show_default=True,
              help="Most frames a row may ask for; rows longer than the model's window render as chunks.")
def run(tables, out, model, actors, gpus_per_actor, device, address, seed, max_attempts, no_resume, ignore_extra,
        cpu_offload, compile_, max_frames):
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
    """
    from cluster.connect import connect
    from renderer.run import RunConfig, plan_rows, run as run_all

    config = RunConfig(tuple(tables), out, model, actors, gpus_per_actor, device, seed, max_attempts,
                       not no_resume, ignore_extra, cpu_offload, compile_, max_frames)
    try:  # before Ray starts
        plan = plan_rows(config.tables, config.model, config.seed, config.ignore_extra, config.max_frames)
    except TableError as exc:
        _table_error(exc)
    try:
        summary = run_all(config, plan, connect=lambda: connect(address, actors))
    except ConfigError as exc:
        _table_error(exc)
    _print_summary(summary, out)
    sys.exit(summary.exit_code)


@main.command(epilog=EPILOG)
@click.argument("tables", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--model", help="Model for rows without a `model` value.")
@click.option("--ignore-extra", is_flag=True, help="Ignore unknown table columns.")
@click.option("--max-frames", type=click.IntRange(min=1), default=MAX_FRAMES, show_default=True,
              help="Most frames a row may ask for.")
def validate(tables, model, ignore_extra, max_frames):
    """Check TABLES and every row without starting Ray; print what would be rejected."""
    from renderer.run import plan_rows

    try:
        plan = plan_rows(tables, model, ignore_extra=ignore_extra, max_frames=max_frames)
    except TableError as exc:
        _table_error(exc)
    for record in plan.rejected:
        click.echo(f"rejected {record['id']!r}: {record['error']}")
    click.echo(f"{len(plan.ids)} rows: {len(plan.requests)} ok, {len(plan.rejected)} rejected")
    sys.exit(1 if plan.rejected else 0)


@main.command()
def models():
    """List model presets and families: inputs, native window, knobs and real checkpoints."""
    from renderer.families import FAMILIES

    for family in FAMILIES.values():
        click.secho(f"{family.name}  ({family.pipeline_class})", bold=True)
        click.echo(f"  presets:    tiny-{family.name}, random-{family.name}")
        click.echo(f"  inputs:     {', '.join(family.inputs)}")
        click.echo(f"  window:     {family.window} frames")
        d = family.defaults
        click.echo(f"  defaults:   {d.num_frames} frames, {d.width}x{d.height}, {d.num_inference_steps} steps, "
                   f"{d.fps} fps, guidance {d.guidance_scale}")
        for key, param in family.allowed_params().items():
            choices = f" ({'|'.join(param.choices)})" if param.choices else ""
            click.echo(f"  params.{key}: {param.kind.__name__}{choices} - {param.help}")
        for checkpoint in family.checkpoints:
            click.echo(f"  checkpoint: {checkpoint}")


def _table_error(exc: Exception):
    click.echo(f"error: {exc}", err=True)
    sys.exit(2)


def _print_summary(summary, out: Path) -> None:
    counts = ", ".join(f"{n} {status}" for status, n in sorted(summary.counts.items()))
    skipped = f" ({summary.skipped} already rendered, skipped)" if summary.skipped else ""
    click.echo(f"done: {counts}{skipped} -> {out / 'metadata.parquet'}")
    for row_id, error in summary.errors:
        click.echo(f"  {row_id!r}: {error}")


if __name__ == "__main__":
    main()
