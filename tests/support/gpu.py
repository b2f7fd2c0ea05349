"""Whether a pytest session is a GPU-only one (`-m gpu`): conftest hides CUDA otherwise."""

from __future__ import annotations

GPU_ONLY_HELP = "run with -m gpu (make gpu-check) on a machine whose torch sees a GPU"


def gpu_only_session(markexpr: str) -> bool:
    """Whether `-m markexpr` selects tests marked `gpu` and no unmarked test (`-m gpu`)."""
    if not markexpr:
        return False
    from _pytest.mark.expression import Expression

    expression = Expression.compile(markexpr)
    return (expression.evaluate(lambda name, **_: name == "gpu")
            and not expression.evaluate(lambda name, **_: False))
