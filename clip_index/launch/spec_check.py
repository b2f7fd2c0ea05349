"""The spec checker: the rules the real backends apply to a compiled KFP pipeline spec, applied
here, before a template is written or submitted.

A local run (`kfp.local`) hands Python objects from task to task and checks none of this; Vertex
AI Pipelines and a Kubeflow Pipelines backend resolve every input from the compiled spec, check
its type, and copy artifacts into pods. Each rule names where it comes from: the backend's
source (kubeflow/pipelines, `backend/src/v2`), a platform issue, or this project's own rules
(GPU on the embed step only; retries on the long loop tasks; no cache on the tasks that write
the published folder). `check_spec` returns every violation; `require_valid` raises
with all of them, each naming the task, the input and the rule's source.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import yaml

from clip_index.limits import MAX_LOOP_WIDTH

# rule name → where it comes from
# Read in kubeflow/pipelines at 7b70c7b (2026-08-21): paths below are in that tree.
RULES: dict[str, str] = {
    "input-type": "kubeflow/pipelines backend/src/v2/driver/resolve.go, resolveInputs: each "
                  "input parameter is checked against the consumer's inputDefinitions; a "
                  "STRING input takes any value as JSON text, any other type refuses a string "
                  "('input parameter %q type mismatch: expect STRUCT, got string'); a loop "
                  "item first takes the type its loop component declares (a loop over a bare "
                  "`list`, or over a field of a loop item, declares STRING)",
    "artifact-iterator": "kubeflow/pipelines backend/src/v2/compiler/argocompiler/dag.go: "
                         "'artifact iterator not implemented yet' (the run is refused)",
    "dag-artifact-list": "kubeflow/pipelines#13900 (fix PR #13901 open): backend/src/v2/"
                         "metadata/client.go GetInputArtifactsByExecutionID keeps one artifact "
                         "per input name, so a list of artifacts passed into a nested pipeline "
                         "reaches its tasks as a list of one, silently",
    "max-artifacts": f"Vertex AI: 'Maximum number of artifacts exceeded. Maximum allowed: "
                     f"{MAX_LOOP_WIDTH}' (kubeflow/kubeflow#7513; whether per input, per task "
                     "or with outputs is not documented, so a task's inputs and outputs are "
                     "counted together), at the loop widths compiled in",
    "loop-name": "kubeflow/pipelines#13239: before backend 2.16.0 (#12808) a loop is recorded "
                 "under its display name but its collected outputs are looked up by its task "
                 "key ('cannot find producer task'): a loop whose outputs are used keeps "
                 "`taskInfo.name` equal to its key (no `name=` on the ParallelFor)",
    "unbounded-collect": "kubeflow/kubeflow#7513: a collected input's size must be fixed at "
                         "compile time (a loop over a task's output has a data-dependent "
                         "width) to be held under the platform's limit",
    "gpu-only-embed": "clip-index rule: GPU requests on the embedding step only (a GPU on "
                      "another task is billed idle)",
    "retry": "clip-index rule: the download and embed tasks retry (preemptible nodes, flaky "
             "hosts); on Vertex AI a retried task skips the shards it finished (its output "
             "folder is mounted storage); on Kubeflow a retry starts from an empty folder "
             "(outputs are uploaded only when the task ends), and resuming comes from "
             "re-submitting with the cache",
    "no-cache-publish": "clip-index rule: a task that writes the published output_dir is not "
                        "cached (a cache hit would skip writing the folder it names)",
}

# the component names (compiled as comp-<name>) of the project's steps the design rules name
GPU_COMPONENTS = frozenset({"embed-images"})
RETRIED_COMPONENTS = frozenset({"download-images", "embed-images"})
_NUMBERS = {"NUMBER_INTEGER", "NUMBER_DOUBLE"}


@dataclass(frozen=True)
class Violation:
    """One broken rule: where (the task's path through the DAGs, and its input) and why."""

    rule: str
    task: str
    input: str
    message: str

    def __str__(self) -> str:
        where = f"task {self.task!r}" + (f", input {self.input!r}" if self.input else "")
        return f"{where}: {self.message} [rule {self.rule}: {RULES[self.rule]}]"


class SpecError(ValueError):
    """A compiled spec that a backend would refuse or mishandle."""

    def __init__(self, name: str, violations: list[Violation]) -> None:
        self.violations = violations
        super().__init__(f"{name}: {len(violations)} rule(s) of the backends broken:\n"
                         + "\n".join(f"- {v}" for v in violations))


def load_documents(path: str) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """(pipeline spec, platform spec or None) of a compiled YAML (the Kubeflow variant is two
    documents: the second is kfp-kubernetes' platform spec)."""
    with open(path, encoding="utf-8") as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    if not docs or "root" not in docs[0]:
        raise ValueError(f"{path}: expected a compiled KFP pipeline spec (a 'root' DAG)")
    return docs[0], docs[1] if len(docs) > 1 else None


def check_file(path: str) -> list[Violation]:
    spec, platform = load_documents(path)
    return check_spec(spec, platform)


def require_valid(path: str) -> None:
    """Raise `SpecError` listing every violation of the compiled YAML at `path`."""
    violations = check_file(path)
    if violations:
        raise SpecError(path, violations)


def check_spec(spec: dict[str, Any], platform: dict[str, Any] | None = None,
               max_artifacts: int = MAX_LOOP_WIDTH) -> list[Violation]:
    """Every rule of `RULES` over a compiled pipeline spec (and its platform spec)."""
    return list(_Checker(spec, platform, max_artifacts).run())


class _Checker:
    def __init__(self, spec: dict[str, Any], platform: dict[str, Any] | None,
                 max_artifacts: int) -> None:
        self.components: dict[str, dict[str, Any]] = spec.get("components", {})
        self.root = spec["root"]
        self.executors = spec.get("deploymentSpec", {}).get("executors", {})
        self.platform_executors = ((platform or {}).get("platforms", {}).get("kubernetes", {})
                                   .get("deploymentSpec", {}).get("executors", {}))
        self.max_artifacts = max_artifacts

    def run(self) -> Iterator[Violation]:
        yield from self._dag("root", self.root, {})

    # ── walking the DAGs ──────────────────────────────────────────────────────────────────
    def _dag(self, path: str, component: dict[str, Any],
             input_counts: dict[str, int | None]) -> Iterator[Violation]:
        """The tasks of DAG `component`; `input_counts`: how many artifacts each of its
        artifact inputs holds (from the task that calls it)."""
        tasks = component.get("dag", {}).get("tasks", {})
        consumed = {ref["producerTask"] for task in tasks.values()
                    for kind in ("artifacts", "parameters")
                    for source in task.get("inputs", {}).get(kind, {}).values()
                    for ref in (source.get("taskOutputArtifact"),
                                source.get("taskOutputParameter")) if ref}
        outputs = component.get("dag", {}).get("outputs", {})
        consumed |= {sel["producerSubtask"] for out in outputs.get("artifacts", {}).values()
                     for sel in out.get("artifactSelectors", [])}
        consumed |= {out["valueFromParameter"]["producerSubtask"]
                     for out in outputs.get("parameters", {}).values()
                     if "valueFromParameter" in out}
        for name, task in tasks.items():
            where = f"{path}/{name}"
            shown = task.get("taskInfo", {}).get("name", name)
            is_loop = "parameterIterator" in task or "artifactIterator" in task
            if is_loop and name in consumed and shown != name:
                yield Violation("loop-name", where, "", f"is displayed as {shown!r} and its "
                                "outputs are collected")
            callee_name = task["componentRef"]["name"]
            callee = self.components.get(callee_name, {})
            yield from self._types(where, component, tasks, task, callee)
            if "artifactIterator" in task:
                yield Violation("artifact-iterator", where, task["artifactIterator"].get(
                    "itemInput", ""), "a loop over a list of artifacts")
            counts = {key: self._count(component, tasks, source, input_counts)
                      for key, source in task.get("inputs", {}).get("artifacts", {}).items()}
            if "dag" in callee:
                for key, spec in callee.get("inputDefinitions", {}).get("artifacts", {}).items():
                    if spec.get("isArtifactList"):
                        yield Violation("dag-artifact-list", where, key,
                                        "a list of artifacts passed into a nested pipeline")
                yield from self._dag(where, callee, counts)
            else:
                yield from self._container(where, callee_name, callee, task, counts)

    def _container(self, where: str, callee_name: str, callee: dict[str, Any],
                   task: dict[str, Any], counts: dict[str, int | None]) -> Iterator[Violation]:
        unbounded = [k for k, n in counts.items() if n is None]
        for key in unbounded:
            yield Violation("unbounded-collect", where, key, "collects the outputs of a loop "
                            "whose width is not fixed at compile time")
        outputs = len(callee.get("outputDefinitions", {}).get("artifacts", {}))
        total = sum(n for n in counts.values() if n is not None) + outputs
        if total > self.max_artifacts:
            detail = ", ".join([*(f"{k}: {n}" for k, n in counts.items()),
                                f"{outputs} output(s)"])
            yield Violation("max-artifacts", where, "", f"handles {total} artifacts ({detail})"
                            f", more than {self.max_artifacts}")
        short = callee_name.removeprefix("comp-")
        executor = self.executors.get(callee.get("executorLabel", ""), {})
        resources = executor.get("container", {}).get("resources", {})
        kubernetes = self.platform_executors.get(callee.get("executorLabel", ""), {})
        asks_gpu = "accelerator" in resources or "nodeSelector" in kubernetes \
            or "tolerations" in kubernetes
        if asks_gpu and short not in GPU_COMPONENTS:
            yield Violation("gpu-only-embed", where, "", "requests an accelerator (or GPU "
                            "node placement) but is not the embed step")
        if short in RETRIED_COMPONENTS and not task.get("retryPolicy", {}).get("maxRetryCount"):
            yield Violation("retry", where, "", "runs for hours over many shards but has no "
                            "retry policy")
        params = callee.get("inputDefinitions", {}).get("parameters", {})
        if "output_dir" in params and task.get("cachingOptions", {}).get("enableCache"):
            yield Violation("no-cache-publish", where, "output_dir", "writes the published "
                            "folder but is cached")

    # ── rule: input types ─────────────────────────────────────────────────────────────────
    def _types(self, where: str, dag: dict[str, Any], tasks: dict[str, Any],
               task: dict[str, Any], callee: dict[str, Any]) -> Iterator[Violation]:
        declared = callee.get("inputDefinitions", {}).get("parameters", {})
        iterator = task.get("parameterIterator", {})
        for key, source in task.get("inputs", {}).get("parameters", {}).items():
            want = declared.get(key, {}).get("parameterType")
            have = self._parameter_type(dag, tasks, source)
            if want and have and not _compatible(have, want):
                yield Violation("input-type", where, key,
                                f"declared {want}, fed {have} ({_describe(source)})")
        item = iterator.get("itemInput")
        raw = iterator.get("items", {}).get("raw")
        if item and raw is not None:  # a loop over a list fixed at compile time
            want = declared.get(item, {}).get("parameterType")
            kinds = {_kind(v) for v in json.loads(raw)}
            wrong = sorted(k for k in kinds if want and not _compatible(k, want))
            if wrong:
                yield Violation("input-type", where, item, f"loop items of type {wrong} for a "
                                f"loop item declared {want}")
        artifacts = callee.get("inputDefinitions", {}).get("artifacts", {})
        for key, source in task.get("inputs", {}).get("artifacts", {}).items():
            want_a = artifacts.get(key, {})
            have_a = self._artifact_def(dag, tasks, source)
            if not want_a or not have_a:
                continue
            want_t = want_a.get("artifactType", {}).get("schemaTitle")
            have_t = have_a.get("artifactType", {}).get("schemaTitle")
            if want_t != have_t and want_t != "system.Artifact":
                yield Violation("input-type", where, key,
                                f"declared {want_t}, fed {have_t} ({_describe(source)})")
            if bool(want_a.get("isArtifactList")) != bool(have_a.get("isArtifactList")):
                yield Violation("input-type", where, key, "a list of artifacts and a single "
                                f"artifact do not match ({_describe(source)})")

    def _parameter_type(self, dag: dict[str, Any], tasks: dict[str, Any],
                        source: dict[str, Any]) -> str | None:
        if "componentInputParameter" in source:
            if source.get("parameterExpressionSelector"):
                return None  # a field of a struct: its type is not declared
            defs = dag.get("inputDefinitions", {}).get("parameters", {})
            return defs.get(source["componentInputParameter"], {}).get("parameterType")
        if "taskOutputParameter" in source:
            ref = source["taskOutputParameter"]
            producer = self.components.get(
                tasks.get(ref["producerTask"], {}).get("componentRef", {}).get("name", ""), {})
            outputs = producer.get("outputDefinitions", {}).get("parameters", {})
            return outputs.get(ref["outputParameterKey"], {}).get("parameterType")
        constant = source.get("runtimeValue", {}).get("constant", _MISSING)
        return None if constant is _MISSING else _kind(constant)

    def _artifact_def(self, dag: dict[str, Any], tasks: dict[str, Any],
                      source: dict[str, Any]) -> dict[str, Any] | None:
        if "componentInputArtifact" in source:
            defs = dag.get("inputDefinitions", {}).get("artifacts", {})
            found: dict[str, Any] | None = defs.get(source["componentInputArtifact"])
            return found
        if "taskOutputArtifact" in source:
            ref = source["taskOutputArtifact"]
            producer = self.components.get(
                tasks.get(ref["producerTask"], {}).get("componentRef", {}).get("name", ""), {})
            out: dict[str, Any] | None = producer.get("outputDefinitions", {}).get(
                "artifacts", {}).get(ref["outputArtifactKey"])
            return out
        return None

    # ── counting the artifacts a task receives ────────────────────────────────────────────
    def _count(self, dag: dict[str, Any], tasks: dict[str, Any], source: dict[str, Any],
               input_counts: dict[str, int | None]) -> int | None:
        if "componentInputArtifact" in source:
            return input_counts.get(source["componentInputArtifact"], 1)
        ref = source.get("taskOutputArtifact")
        if ref is None:
            return 1
        return self._produced(tasks, ref["producerTask"], ref["outputArtifactKey"])

    def _produced(self, tasks: dict[str, Any], name: str, key: str) -> int | None:
        """How many artifacts output `key` of task `name` holds: one from a container task;
        from a loop, its selectors' artifacts times the loop's width (None: not fixed)."""
        task = tasks.get(name, {})
        callee = self.components.get(task.get("componentRef", {}).get("name", ""), {})
        if "dag" not in callee:
            return 1
        selectors = (callee["dag"].get("outputs", {}).get("artifacts", {}).get(key, {})
                     .get("artifactSelectors", []))
        inner = callee["dag"].get("tasks", {})
        counts = [self._produced(inner, s["producerSubtask"], s["outputArtifactKey"])
                  for s in selectors]
        if any(c is None for c in counts):
            return None
        total = sum(c for c in counts if c is not None)
        iterator = task.get("parameterIterator") or task.get("artifactIterator")
        if iterator is None:
            return total
        raw = iterator.get("items", {}).get("raw")
        return None if raw is None else total * len(json.loads(raw))


_MISSING = object()


def _kind(value: Any) -> str:
    """The parameter type a JSON value has."""
    if isinstance(value, bool):
        return "BOOLEAN"
    if isinstance(value, int):
        return "NUMBER_INTEGER"
    if isinstance(value, float):
        return "NUMBER_INTEGER" if value.is_integer() else "NUMBER_DOUBLE"
    if isinstance(value, str):
        return "STRING"
    if isinstance(value, list):
        return "LIST"
    return "STRUCT"


def _compatible(have: str, want: str) -> bool:
    """Whether resolve.go accepts a `have` value for a `want` input: a STRING input takes
    anything (as JSON text), a number input any number; else the kinds must be equal."""
    return have == want or want == "STRING" or (have in _NUMBERS and want in _NUMBERS)


def _describe(source: dict[str, Any]) -> str:
    if "componentInputParameter" in source:
        return f"from {source['componentInputParameter']}"
    if "componentInputArtifact" in source:
        return f"from {source['componentInputArtifact']}"
    for key in ("taskOutputParameter", "taskOutputArtifact"):
        if key in source:
            ref = source[key]
            return f"from task {ref['producerTask']}"
    return "a constant"
