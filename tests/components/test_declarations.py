"""Component declarations: every parameter documented (the Vertex UI shows the docstring), and
every step parameter the same name and default as its config field (one name per setting,
everywhere)."""

import dataclasses
import inspect

import pytest

from clip_index import components
from clip_index.config import DownloadConfig, EmbedConfig, IndexConfig, LoadConfig

STEP_CONFIGS = {
    components.load_dataset: LoadConfig,
    components.download_images: DownloadConfig,
    components.embed_images: EmbedConfig,
    components.build_index: IndexConfig,
}
# every component: one module per component, named after it (tests/unit/test_packaging.py
# checks the files), re-exported by the package
ALL = [getattr(components, name) for name in components.__all__
       if name not in ("Components", "make_components")]


def test_each_component_lives_in_a_module_named_after_it() -> None:
    assert len(ALL) >= 9
    for func in ALL:
        assert func.__module__ == f"{components.__name__}.{func.__name__}", func.__name__


@pytest.mark.parametrize("func", ALL, ids=lambda f: f.__name__)
def test_every_parameter_is_documented(func) -> None:
    doc = inspect.getdoc(func) or ""
    assert "Args:" in doc, func.__name__
    for name in inspect.signature(func).parameters:
        assert f"\n    {name}:" in doc, f"{func.__name__}: parameter {name!r} not documented"


@pytest.mark.parametrize("func", list(STEP_CONFIGS), ids=lambda f: f.__name__)
def test_step_parameters_match_the_config(func) -> None:
    fields = {f.name: f.default for f in dataclasses.fields(STEP_CONFIGS[func])}
    checked = 0
    for name, param in inspect.signature(func).parameters.items():
        if param.default is inspect.Parameter.empty or name not in fields:
            continue
        assert param.default == fields[name], f"{func.__name__}.{name}: component default " \
            f"{param.default!r} != config default {fields[name]!r}"
        checked += 1
    assert checked >= 3, f"{func.__name__}: expected its step parameters to be config fields"
