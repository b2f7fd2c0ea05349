"""What a compiled template will ask of Vertex AI, read from the spec itself (not from this
checkout's pipeline code, which may have moved on): the images it names, each task's machine
shape and accelerator, how many copies of each task may run at once (the product of the
`parallelismLimit`s of the loops around it), and whether the compile flags given with
`--template` match what the template was compiled with. Also the one-screen summary `submit`
prints before it creates the run.

Tasks are found by walking the DAG, not by name: the loops' and tasks' names change when the
pipeline's shape does; a task's step is recognised by its executor label
(``exec-download-images`` → download).
"""

from __future__ import annotations

import argparse
import math
from dataclasses import dataclass
from typing import Any

# the steps with compile flags (--download-cpu, ...), recognised by a word of the executor
# label, in this order ("exec-write-embeddings" is the write step, not embed)
STEPS = ("write", "index", "download", "embed")
# Rows of datasets the summary knows without listing them (DataComp-small: 12.8M).
KNOWN_ROWS = {"mlfoundations/datacomp_small": 12_800_000}


@dataclass(frozen=True)
class TaskShape:
    """One task of the template: its path in the DAG (loop names and task name), its executor,
    image, CPU/memory limits, accelerator, and how many copies may run at once (None: a loop
    on its path has no parallelism limit and a width known only at run time)."""

    path: tuple[str, ...]
    executor: str
    image: str
    cpu: float | None
    memory: str | None
    gpu_type: str | None
    gpu_count: int
    concurrency: int | None
    looped: bool = False

    @property
    def step(self) -> str | None:
        words = self.executor.split("-")
        return next((s for s in STEPS if s in words), None)

    @property
    def name(self) -> str:
        return self.path[-1]

    def shape(self) -> str:
        parts = [f"{self.cpu:g} vCPU" if self.cpu else "default machine",
                 *([f"{self.memory}"] if self.memory else []),
                 *([f"{self.gpu_count}x {self.gpu_type}"] if self.gpu_count else [])]
        return ", ".join(parts)


def task_shapes(spec: dict[str, Any]) -> list[TaskShape]:
    """Every container task of a compiled spec, with its shape and concurrency."""
    executors = spec.get("deploymentSpec", {}).get("executors", {})
    components = spec.get("components", {})
    shapes: list[TaskShape] = []

    def walk(dag: dict[str, Any], path: tuple[str, ...], width: int | None,
             looped: bool) -> None:
        for name, task in sorted(dag.get("tasks", {}).items()):
            component = components.get(task.get("componentRef", {}).get("name", ""), {})
            limit = task.get("iteratorPolicy", {}).get("parallelismLimit")
            inner, in_loop = width, looped
            if "parameterIterator" in task or "artifactIterator" in task:
                in_loop = True
                items = task.get("parameterIterator", {}).get("items", {})
                static = _static_width(items.get("raw"))
                bound = int(limit) if limit else static
                inner = None if width is None or bound is None else width * bound
            if "dag" in component:
                walk(component["dag"], (*path, name), inner, in_loop)
                continue
            container = executors.get(component.get("executorLabel", ""), {}).get(
                "container", {})
            resources = container.get("resources", {})
            accel = resources.get("accelerator", {})
            cpu = _number(resources.get("cpuLimit", resources.get("resourceCpuLimit")))
            shapes.append(TaskShape(
                path=(*path, name), executor=component.get("executorLabel", ""),
                image=container.get("image", ""), cpu=cpu,
                memory=resources.get("resourceMemoryLimit") or (
                    f"{resources['memoryLimit']:g}G" if "memoryLimit" in resources else None),
                gpu_type=accel.get("resourceType") or accel.get("type"),
                gpu_count=int(_number(accel.get("resourceCount") or accel.get("count")) or 0),
                concurrency=inner, looped=in_loop))

    walk(spec.get("root", {}).get("dag", {}), (), 1, False)
    return shapes


def _number(value: Any) -> float | None:
    """A CPU or count of the spec ("14", 14.0, "500m") as a number, or None when it is absent
    or a run-time placeholder ("{{$.inputs.parameters[...]}}")."""
    if value is None:
        return None
    text = str(value)
    try:
        return float(text[:-1]) / 1000 if text.endswith("m") else float(text)
    except ValueError:
        return None


def _static_width(raw: Any) -> int | None:
    """The item count of a loop over a list written into the spec (``items.raw``)."""
    import json

    try:
        items = json.loads(raw) if isinstance(raw, str) else None
    except ValueError:
        return None
    return len(items) if isinstance(items, list) else None


def images(spec: dict[str, Any]) -> list[str]:
    """The container images a template names, sorted."""
    return sorted({e.get("container", {}).get("image", "") for e in
                   spec.get("deploymentSpec", {}).get("executors", {}).values()} - {""})


def at_once(task: TaskShape, shards: int | None = None) -> int | None:
    """Copies of `task` that may run at once: its loops' width, and never more than the run's
    shards when they are known (a work unit holds at least one shard), or None when open."""
    if task.concurrency is None:
        return shards if task.looped else 1
    return min(task.concurrency, shards) if shards and task.looped else task.concurrency


def shard_count(spec: dict[str, Any], params: dict[str, Any]) -> int | None:
    """The shards a run of `params` loads, when `limit` bounds its rows (else None)."""
    defaults = {n: p.get("defaultValue") for n, p in
                spec.get("root", {}).get("inputDefinitions", {}).get("parameters", {}).items()}
    limit = int(params.get("limit", defaults.get("limit")) or 0)
    shard_size = int(params.get("shard_size", defaults.get("shard_size")) or 10_000)
    return math.ceil(limit / shard_size) if limit > 0 else None


def gpu_demand(spec: dict[str, Any],
               shards: int | None = None) -> tuple[str, int, int | None] | None:
    """(GPU type, GPUs per task, GPUs held at once or None when a loop width is open) of the
    template's GPU tasks (with `shards`, a run that loads that many), or None for a template
    without GPUs. Different GPU types in one template are refused: the pipeline compiles
    one."""
    gpu = [t for t in task_shapes(spec) if t.gpu_count]
    if not gpu:
        return None
    types = {t.gpu_type for t in gpu}
    if len(types) != 1:
        raise ValueError(f"template asks for several GPU types {sorted(map(str, types))}: "
                         "expected one (the embed step's)")
    counts = [at_once(t, shards) for t in gpu]
    held = None if None in counts else sum(t.gpu_count * (n or 0) for t, n in zip(gpu, counts))
    return str(gpu[0].gpu_type), max(t.gpu_count for t in gpu), held


def compiled_settings(spec: dict[str, Any]) -> dict[str, Any]:
    """The compile flags a template was compiled with, as far as they show in it: images,
    GPU type and count, each step's CPU/memory, and the loop widths (`*_parallelism`)."""
    found: dict[str, Any] = {"images": images(spec)}
    for t in task_shapes(spec):
        if t.step is None:
            continue
        if t.cpu is not None:
            found[f"{t.step}_cpu"] = t.cpu
        if t.memory:
            found[f"{t.step}_memory"] = t.memory
        if t.step in ("download", "embed") and t.concurrency is not None:
            found[f"{t.step}_parallelism"] = t.concurrency
        if t.step == "embed":
            found["gpu_count"] = t.gpu_count
            if t.gpu_type:
                found["gpu_type"] = t.gpu_type
    return found


def given_settings(args: argparse.Namespace) -> dict[str, Any]:
    """The compile flags (`add_settings_flags`) given on the command line with a value other
    than their default: what the user expects the template to have been compiled with."""
    from clip_index.launch.settings_flags import add_settings_flags

    defaults = argparse.ArgumentParser(add_help=False)
    add_settings_flags(defaults)
    default = vars(defaults.parse_args([]))
    return {k: getattr(args, k) for k in default
            if hasattr(args, k) and getattr(args, k) != default[k]}


def settings_drift(spec: dict[str, Any], given: dict[str, Any]) -> list[str]:
    """Each compile flag in `given` that the template disagrees with, as
    ``--flag: VALUE given, the template has VALUE``."""
    have = compiled_settings(spec)
    drift: list[str] = []
    if "image_tag" in given or "image_repo" in given:
        tag, repo = given.get("image_tag"), given.get("image_repo")
        for image in have["images"]:
            name, _, image_tag = image.rpartition(":")
            if tag is not None and image_tag != tag:
                drift.append(f"--image-tag: {tag!r} given, the template runs {image}")
            if repo is not None and not name.startswith(repo.rstrip("/") + "/"):
                drift.append(f"--image-repo: {repo!r} given, the template runs {image}")
    for key, value in given.items():
        if key in ("image_tag", "image_repo") or key not in have:
            continue
        compiled = have[key]
        same = (float(value) == float(compiled) if key.endswith("_cpu")
                else str(value) == str(compiled))
        if not same:
            drift.append(f"--{key.replace('_', '-')}: {value!r} given, the template was "
                         f"compiled with {compiled!r}")
    return drift


def loops(spec: dict[str, Any]) -> list[tuple[str, int | None, list[str]]]:
    """(loop path, tasks at once, task names inside) for every task that runs in a loop."""
    grouped: dict[str, tuple[int | None, list[str]]] = {}
    for t in task_shapes(spec):
        if t.looped:
            key = "/".join(t.path[:-1])
            grouped.setdefault(key, (t.concurrency, []))[1].append(t.name)
    return [(k, width, names) for k, (width, names) in grouped.items()]


def estimate_args(spec: dict[str, Any], rows: int, shard_size: int) -> list[str] | None:
    """`clip-index plan` flags for this template's shape, or None when the planner does not
    model it (no GPU on the embed step)."""
    have = compiled_settings(spec)
    demand = gpu_demand(spec)
    if demand is None or not have.get("embed_parallelism"):
        return None
    gpu_type, per_task, _ = demand
    argv = ["--rows", str(rows), "--shard-size", str(shard_size), "--gpu-type", gpu_type,
            "--gpu-count", str(per_task),
            "--gpus", str(per_task * int(have["embed_parallelism"]))]
    if have.get("download_parallelism"):
        argv += ["--download-parallelism", str(have["download_parallelism"])]
    for step in ("download", "embed"):
        if have.get(f"{step}_cpu"):
            argv += [f"--{step}-cpu", str(math.ceil(have[f"{step}_cpu"]))]
        if have.get(f"{step}_memory"):
            argv += [f"--{step}-memory", str(have[f"{step}_memory"])]
    return argv


def summary(spec: dict[str, Any], params: dict[str, Any], pipeline_root: str) -> str:
    # params: the run's parameters as submitted (the template's defaults fill the others)
    """The one screen `submit` prints before it creates the run: rows, tasks per loop, machine
    shapes, the planner's wall time and cost, the pipeline root and the output folder."""
    limit = int(params.get("limit") or 0)
    dataset = str(params.get("dataset", ""))
    rows = limit or KNOWN_ROWS.get(dataset)
    shard_size = int(params.get("shard_size") or 10_000)
    lines = [f"dataset:        {dataset}",
             "rows:           " + (f"{rows:,}" + (" (--param limit)" if limit else "")
                                   if rows else "all (count unknown here; "
                                   "`clip-index plan --rows N` estimates a size you give)")]
    fingerprint = str(params.get("dataset_fingerprint", ""))
    if fingerprint.startswith("unique:"):
        lines.append("load cache:     OFF for this run (the dataset could not be fingerprinted "
                     "from here: see the warning above)")
    shards = shard_count(spec, params)
    for path, width, names in loops(spec):
        runs = f"; {min(width, shards)} for {shards} shard(s)" if width and shards and \
            shards < width else ""
        lines.append(f"loop {path}: up to {width if width is not None else '?'} tasks at once"
                     f"{runs} ({', '.join(sorted(set(names)))})")
    seen: set[tuple[str, str]] = set()
    for t in task_shapes(spec):
        if t.step and (t.step, t.shape()) not in seen:
            seen.add((t.step, t.shape()))
            lines.append(f"{t.step + ' task:':<15} {t.shape()}")
    estimate = _estimate(spec, rows, shard_size)
    if estimate:
        lines.append(estimate)
    lines += [f"pipeline root:  {pipeline_root}",
              f"output folder:  {params.get('output_dir', '')}"]
    return "\n".join(lines)


def _estimate(spec: dict[str, Any], rows: int | None, shard_size: int) -> str | None:
    from clip_index.launch import plan

    if not rows:
        return None
    argv = estimate_args(spec, rows, shard_size)
    if argv is None:
        return "estimate:       none (the planner models runs with a GPU on the embed step)"
    parser = argparse.ArgumentParser(add_help=False, exit_on_error=False)
    plan.add_arguments(parser)
    try:
        total = plan.estimate(parser.parse_args(argv))["total"]
    except (argparse.ArgumentError, ValueError, KeyError) as e:
        return f"estimate:       none ({e})"
    return (f"estimate:       {total['wall_h']:.2f} h wall, {total['gpu_h']:.1f} GPU h, "
            f"${total['cost_usd']:.2f} at list prices (`clip-index plan "
            f"{' '.join(argv)}` shows the assumptions)")
