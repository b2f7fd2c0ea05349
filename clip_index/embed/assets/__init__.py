"""Bundled model assets: the `tiny-clip` open_clip config and its weights trained on the sample."""

from __future__ import annotations

from pathlib import Path

ASSETS_DIR = Path(__file__).parent
MODEL_CONFIG_DIR: Path = ASSETS_DIR / "model_configs"
TINY_CLIP_MODEL = "tiny-clip"
TINY_CLIP_WEIGHTS: Path = ASSETS_DIR / "tiny-clip.safetensors"


def register_model_configs() -> None:
    """Make open_clip know the configs in `MODEL_CONFIG_DIR` (e.g. "tiny-clip"); idempotent.

    Call it before `open_clip.create_model_and_transforms("tiny-clip", ...)` *and* before
    `open_clip.get_tokenizer("tiny-clip")`: an unknown name silently gets a tokenizer with the
    default 77-token context, which the 16-token tiny-clip text tower rejects.
    """
    import open_clip

    names = {path.stem for path in MODEL_CONFIG_DIR.glob("*.json")}
    if not names <= set(open_clip.list_models()):
        open_clip.add_model_config(MODEL_CONFIG_DIR)
