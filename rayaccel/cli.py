"""`rayaccel` command line: validate, plan, run, submit, tune, report, schema and data prepare.

Bad input exits with status 2 and one line per problem, never a traceback; a failed
training run exits with status 1 and its root cause.
"""

from __future__ import annotations

import argparse
import re
import sys

from rayaccel.config import ConfigError, dump_job, load_job, resolve_data_facts

EXIT_BAD_INPUT = 2
_OVERRIDE = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)+=.*")


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    # Overrides may follow options (`submit JOB --address URL train.epochs=3`), which
    # argparse cannot collect into a positional list, so they are taken out first.
    overrides = [a for a in argv[1:] if _OVERRIDE.fullmatch(a)]
    args = parser.parse_args([a for a in argv if a not in overrides or a == argv[0]])
    if hasattr(args, "overrides"):
        args.overrides = [*args.overrides, *overrides]
    elif overrides:
        parser.error(f"unexpected arguments: {' '.join(overrides)}")
    try:
        return args.handler(args)
    except ConfigError as err:
        for line in err.problems:
            print(line, file=sys.stderr)
        return EXIT_BAD_INPUT


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="rayaccel",
        description="Train vision models faster with proven speed-up methods on Ray.",
    )
    commands = parser.add_subparsers(dest="command", required=True)

    def job_command(name: str, handler, help_text: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help_text, description=help_text)
        sub.add_argument("job", help="job YAML file")
        sub.add_argument(
            "overrides", nargs="*", metavar="section.key=value", help="override job fields"
        )
        sub.add_argument(
            "--curriculum",
            metavar="FILE",
            help="a curriculum (or LR-rule) file written by `rayaccel tune`, applied to the job",
        )
        sub.set_defaults(handler=handler)
        return sub

    job_command(
        "validate",
        _validate,
        "check a job and print the resolved job (without its data if it names data.card)",
    )
    plan = job_command(
        "plan",
        _plan,
        "print the epoch/step/batch/LR plan of a job (without its data if it names data.card)",
    )
    plan.add_argument(
        "--show-job", action="store_true", help="also print the resolved job, after the plan"
    )
    run = job_command("run", _run, "train a job on the connected (or a new local) Ray cluster")
    run.add_argument(
        "--verbose",
        action="store_true",
        help="also show Ray's own output on the console (it always goes to ray.log in the "
        "run folder)",
    )

    from rayaccel.submit import add_submit_arguments

    submit = commands.add_parser(
        "submit",
        help="submit a job to a Ray cluster and stream its logs",
        description="Upload the working directory and run `rayaccel run JOB` on a Ray "
        "cluster's job server; exits with the job's status.",
    )
    add_submit_arguments(submit)
    submit.set_defaults(handler=_submit)

    tune = commands.add_parser(
        "tune",
        help="search curricula, LR scaling or job fields with Ray Tune",
        description="Run a search file (searches/*.yaml): parallel Ray Tune trials, each "
        "training the base job with Ray Train; prints a table and writes the results and the "
        "best configuration as YAML.",
    )
    tune.add_argument("search", help="search YAML file")
    tune.add_argument(
        "--output",
        metavar="FILE",
        help="where to write the best configuration (default: the search folder)",
    )
    tune.set_defaults(handler=_tune)

    schema = commands.add_parser(
        "schema",
        help="print the job JSON Schema (or the Markdown reference)",
        description="Print the job files' JSON Schema, generated from rayaccel's job models, "
        "for editors' completion and checking; --markdown prints the field reference instead; "
        "--write DIR writes both (job-schema.json, reference.md) into DIR.",
    )
    output = schema.add_mutually_exclusive_group()
    output.add_argument("--markdown", action="store_true", help="print the Markdown reference")
    output.add_argument("--write", metavar="DIR", help="write job-schema.json and reference.md")
    schema.set_defaults(handler=_schema)

    data = commands.add_parser("data", help="dataset tools")
    data_commands = data.add_subparsers(dest="data_command", required=True)
    from rayaccel.data.prepare import add_prepare_arguments

    prepare = data_commands.add_parser(
        "prepare",
        help="convert a dataset into parquet shards",
        description="Convert Fashion-MNIST, CIFAR-10/100 or a class-per-folder image tree "
        "into parquet shards plus metadata.json that any Ray cluster can read. Image trees are "
        "converted by parallel Ray tasks (RAY_ADDRESS, a running cluster, or a local Ray) and a "
        "re-run of an interrupted command resumes.",
    )
    add_prepare_arguments(prepare)
    prepare.set_defaults(handler=_prepare)

    report = commands.add_parser(
        "report",
        help="plots and a comparison table of run folders",
        description="Plot validation accuracy against wall time and compute, the plan's "
        "resolution, batch size and LR, and images/s per epoch of one or more run folders, "
        "and print a markdown table comparing them (ratios against the first run).",
    )
    report.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run folders (path or URI)")
    report.add_argument(
        "--out",
        default=None,
        help="folder for the PNGs and report.md (default: the run folder for one run, "
        "./report for several)",
    )
    report.set_defaults(handler=_report)
    return parser


def _load(args, *, plan_only: bool):
    """The job with its data resolved; contradicted `data.card` / `data.facts` are warned of."""
    job = load_job(args.job, args.overrides, check_paths=False, curriculum_file=args.curriculum)
    resolved = resolve_data_facts(job, source=args.job, plan_only=plan_only)
    for line in resolved.contradictions:
        print(f"{args.job}: warning: {line}", file=sys.stderr)
    return resolved


def _validate(args) -> int:
    resolved = _load(args, plan_only=True)
    _check_model(resolved.job, args.job, resolved.train_images)
    _check_trackers(resolved.job, args.job)
    print(dump_job(resolved.job), end="")
    if resolved.assumed:
        print(f"{args.job}: {resolved.assumed}", file=sys.stderr)
    print(f"{args.job}: OK", file=sys.stderr)
    return 0


def _plan(args) -> int:
    from rayaccel.methods.registry import methods_line
    from rayaccel.plan import PlanError, format_plan
    from rayaccel.train.runner import build_run, data_line

    resolved = _load(args, plan_only=True)
    job = resolved.job
    try:
        plan, _ = build_run(job, train_images=resolved.train_images)
    except PlanError as err:
        raise ConfigError([f"{args.job}: {err}"]) from None
    print(format_plan(plan))
    if job.data.mode == "ray":
        print(data_line(job))
    print(methods_line(job))
    if resolved.assumed:
        print(resolved.assumed)
    if args.show_job:
        print()
        print(dump_job(job), end="")
    return 0


def _run(args) -> int:
    from rayaccel.models.weights import WeightsError
    from rayaccel.plan import PlanError
    from rayaccel.train.runner import RunFailed, run_job

    resolved = _load(args, plan_only=False)
    job = resolved.job
    _check_model(job, args.job, resolved.train_images)
    _check_trackers(job, args.job)
    try:
        run_job(job, console=True, verbose=args.verbose)
    except (PlanError, WeightsError) as err:
        raise ConfigError([f"{args.job}: {err}"]) from None
    except RunFailed as err:
        print(f"rayaccel: run failed: {err}", file=sys.stderr)
        return 1
    return 0


def _check_model(job, source: str, train_images: int | None) -> None:
    from rayaccel.train.model_check import model_problem

    problem = model_problem(job, source, train_images=train_images)
    if problem is not None:
        raise ConfigError([problem])


def _check_trackers(job, source: str) -> None:
    from rayaccel.config.job import tracking_problems

    problems = tracking_problems(job.tracking)
    if problems:
        raise ConfigError([f"{source}: {line}" for line in problems])


def _schema(args) -> int:
    from rayaccel.config.reference import reference_markdown, schema_text, write_generated

    if args.write:
        for path in write_generated(args.write):
            print(f"[rayaccel] wrote {path}")
    else:
        print(reference_markdown() if args.markdown else schema_text(), end="")
    return 0


def _tune(args) -> int:
    from rayaccel.plan import PlanError
    from rayaccel.train.runner import RunFailed
    from rayaccel.tune import run_search
    from rayaccel.tune.common import SearchFailed

    try:
        summary, table = run_search(args.search, args.output)
    except PlanError as err:
        raise ConfigError([f"{args.search}: {err}"]) from None
    except (SearchFailed, RunFailed) as err:
        print(f"rayaccel tune: search failed: {err}", file=sys.stderr)
        return 1
    print(table)
    return 0


def _submit(args) -> int:
    from rayaccel.submit import run_submit

    return run_submit(args)


def _report(args) -> int:
    import os

    from rayaccel.core.storage import RunFolder
    from rayaccel.report import ReportError, load_run, write_report

    try:
        records = [load_run(location) for location in args.runs]
    except ReportError as err:
        raise ConfigError([f"rayaccel report: {err}"]) from None
    out = args.out or (args.runs[0] if len(args.runs) == 1 else "report")
    out = out if "://" in out else os.path.abspath(out)
    names = write_report(records, RunFolder(out.rstrip("/")).write_bytes)
    print((RunFolder(out).read_text("report.md") or "").rstrip())
    print(f"[rayaccel] wrote {', '.join(names)} to {out}")
    return 0


def _prepare(args) -> int:
    from rayaccel.data.prepare import PrepareError, run_prepare

    try:
        return run_prepare(args)
    except (PrepareError, FileNotFoundError) as err:
        print(f"rayaccel data prepare: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())
