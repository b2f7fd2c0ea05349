"""`clip-index plan`: estimates follow the rate table, state their assumptions, and refuse bad
input."""

from __future__ import annotations

import json

import pytest

from clip_index.cli import build_parser, main
from clip_index.launch import plan


def run(*argv: str) -> dict:
    return plan.estimate(build_parser().parse_args(["plan", *argv]))


def test_issue_example_prints_steps_assumptions_and_reference(
        capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--rows", "12800000", "--gpu-type", "NVIDIA_L4", "--gpus", "8"]) == 0
    out = capsys.readouterr().out
    for text in ("| download |", "| embed |", "| index |", "Assumptions:", "72%",
                 "list prices", "estimate: T4 x 121/65", "Reference run", "8 h 15 min"):
        assert text in out


def test_embed_estimate_follows_the_reference_rate() -> None:
    # the reference run's own setting: 9.25M images on 4 T4 at 78 img/s per GPU = 8.2 h of
    # GPU time, plus the per-task start-up
    p = run("--rows", "12800000", "--gpu-type", "NVIDIA_TESLA_T4", "--gpus", "4")
    embed = next(s for s in p["steps"] if s["step"] == "embed")
    images = 12_800_000 * 0.72
    pure_gpu_h = images / 78 / 3600
    startup_h = 1280 * plan.TASK_START_S / 3600
    assert embed["gpu_h"] == pytest.approx(pure_gpu_h + startup_h, rel=1e-6)
    assert embed["wall_h"] == pytest.approx(embed["gpu_h"] / 4, rel=0.01)
    price = plan.GPU_PRICE_PER_H["NVIDIA_TESLA_T4"]
    assert embed["cost_usd"] > embed["gpu_h"] * price  # GPU plus its vCPUs and memory


def test_more_gpus_shorten_the_run_and_overrides_apply() -> None:
    four = run("--rows", "1000000", "--gpu-type", "NVIDIA_L4", "--gpus", "4")
    eight = run("--rows", "1000000", "--gpu-type", "NVIDIA_L4", "--gpus", "8")
    assert eight["total"]["wall_h"] < four["total"]["wall_h"]
    assert eight["total"]["gpu_h"] == pytest.approx(four["total"]["gpu_h"], rel=0.02)
    free = run("--rows", "1000000", "--gpu-type", "NVIDIA_L4", "--gpu-price-per-h", "0",
               "--vcpu-price-per-h", "0", "--gib-price-per-h", "0")
    assert free["total"]["cost_usd"] == pytest.approx(plan.RUN_FEE_USD)
    fast = run("--rows", "1000000", "--gpu-type", "NVIDIA_L4", "--embed-img-per-s-per-gpu",
               "5000")
    # decode-bound then: 316 img/s per vCPU x 6 vCPU (the embed task default)
    assert "1896 img/s per task" in [s["rate"] for s in fast["steps"]]


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--rows", "1000", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["step"] for s in data["steps"]] == ["download", "embed", "write", "index"]


@pytest.mark.parametrize("argv, message", [
    (["--rows", "0"], "--rows 0"),
    (["--rows", "10", "--gpus", "3", "--gpu-count", "2"], "--gpus 3 with --gpu-count 2"),
    (["--rows", "10", "--gpu-type", "NVIDIA_GTX_1080"], "NVIDIA_GTX_1080"),
    (["--rows", "10", "--success-rate", "1.5"], "--success-rate 1.5"),
])
def test_bad_input(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", *argv]) == 2
    assert message in capsys.readouterr().err
