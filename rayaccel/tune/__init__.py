"""`rayaccel tune SEARCH.yaml`: curriculum, LR-scaling and field searches on Ray Tune.

Each trial of a search runs Ray Train runs of the base job (the Train-in-Tune pattern of Ray
2.60: a function trainable that calls `TorchTrainer.fit()`); results and the best
configuration are written as YAML a job can take (`rayaccel run JOB --curriculum FILE`).
Ray is imported only when a search runs (`rayaccel tune` is the only command that needs it).
"""

from __future__ import annotations

from rayaccel.tune.spec import CurriculumSearch, LrScalingSearch, load_search


def run_search(path: str, output: str | None = None) -> tuple[dict, str]:
    """Runs the search a file describes; returns its summary and the table to print."""
    search = load_search(path)
    if isinstance(search, CurriculumSearch):
        from rayaccel.tune.curriculum_search import format_curriculum_results, run_curriculum_search

        summary = run_curriculum_search(search, path, output)
        return summary, format_curriculum_results(summary)
    if isinstance(search, LrScalingSearch):
        from rayaccel.tune.lr_scaling_search import format_lr_results, run_lr_scaling_search

        summary = run_lr_scaling_search(search, path, output)
        return summary, format_lr_results(summary)
    from rayaccel.tune.field_search import format_field_results, run_field_search

    summary = run_field_search(search, path, output)
    return summary, format_field_results(summary)


__all__ = ["load_search", "run_search"]
