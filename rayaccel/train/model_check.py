"""The model a job names, checked on the driver before any worker builds it.

A wrong `model.kwargs` key, or an image size the model cannot take, otherwise fails in every
worker after Ray has started, as a traceback from inside timm. Building the model on the meta
device and running a meta batch through it finds both in milliseconds, with no weights.
"""

from __future__ import annotations

from rayaccel.config import JobConfig
from rayaccel.models import RESNET9_NAME, kwargs_problem, model_exists, suggest_models
from rayaccel.plan import PlanError, make_plan
from rayaccel.train.spec import job_model_kwargs


def model_problem(job: JobConfig, source: str, *, train_images: int | None) -> str | None:
    """The one line saying why the job's model cannot train on its data, or None.

    Checks that the name exists, that the timm model accepts `model.kwargs` (resnet9's own
    fields are checked by the schema), and that the model takes every image size the plan
    feeds it: the full resolution and, when `train_images` is known, each stage's.

    Args:
        job: A data-resolved job.
        source: What the line starts with, usually the job file's path.
        train_images: Images in the training split, to plan the stages; None checks only
            `data.image_size_px`.
    """
    name = job.model.name
    if name != RESNET9_NAME and not model_exists(name):
        hint = ", ".join(suggest_models(name)) or "see timm.list_models()"
        return f"{source}: model.name: unknown model {name!r}; resnet9 or a timm model, e.g. {hint}"
    kwargs = job_model_kwargs(job)
    full_px = job.data.image_size_px
    sizes_px = {full_px}
    if train_images is not None:
        try:
            stages = make_plan(job, train_samples=train_images).stages
        except PlanError:
            stages = ()  # `rayaccel plan` and `run` report it; the full size is still checked
        sizes_px.update(stage.resolution_px for stage in stages)
    problem = kwargs_problem(
        name,
        kwargs,
        num_classes=job.data.num_classes,
        in_chans=job.data.channels,
        task=job.data.task,
        sizes_px=tuple(sorted(sizes_px, reverse=True)),
    )
    if problem is None:
        return None
    where, reason = problem
    if where.isdigit():
        field = (
            "data.image_size_px" if int(where) == full_px else f"curriculum: the {where} px stage"
        )
    else:
        field = f"model.kwargs.{where}" if where else "model.kwargs"
    return f"{source}: {field}: {reason}"
