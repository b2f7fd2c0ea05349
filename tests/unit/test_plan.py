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
    for text in ("| download | 32 |", "| embed | 8 |", "| index | 1 |", "Assumptions:", "72%",
                 "list prices", "estimate: 121 TFLOPS x 25%", "Reference run", "8 h 15 min",
                 "one wave per loop", "start-up"):
        assert text in out


def test_reference_size_on_eight_l4_is_under_three_hours_in_46_tasks() -> None:
    """DataComp-small (12.8M rows, 1,280 shards) on 8 L4s: the loops keep their compiled widths
    (32 download, 8 embed tasks), and the run fits in 3 hours."""
    p = run("--rows", "12800000", "--gpu-type", "NVIDIA_L4", "--gpus", "8")
    tasks = {s["step"]: s["tasks"] for s in p["steps"]}
    assert tasks["download"] == 32 and tasks["embed"] == 8
    assert p["total"]["tasks"] < 100
    assert p["total"]["wall_h"] < 3


def test_embed_follows_the_rate_and_the_longest_unit() -> None:
    # 4 T4 tasks of 320 shards each; the estimated T4 rate is below the 8-vCPU decode rate
    p = run("--rows", "12800000", "--gpu-type", "NVIDIA_TESLA_T4", "--gpus", "4")
    embed = next(s for s in p["steps"] if s["step"] == "embed")
    rate = plan.gpu_rate("NVIDIA_TESLA_T4")
    assert rate < 316 * 6
    unit_images = 320 * 10_000 * 0.72
    assert embed["task_h"] == pytest.approx((plan.TASK_START_S + unit_images / rate) / 3600)
    assert embed["wall_h"] == embed["task_h"]  # one wave
    assert embed["gpu_h"] == pytest.approx(embed["billed_h"])  # one GPU per task
    assert embed["billed_h"] == pytest.approx(
        (4 * plan.TASK_START_S + 12_800_000 * 0.72 / rate) / 3600)
    assert "faster" in p["against_reference"] and "8.25 h" in p["against_reference"]
    price = plan.GPU_PRICE_PER_H["NVIDIA_TESLA_T4"]
    assert embed["cost_usd"] > embed["gpu_h"] * price  # GPU plus its vCPUs and memory


def test_more_gpus_shorten_the_run_and_overrides_apply() -> None:
    four = run("--rows", "1000000", "--gpu-type", "NVIDIA_L4", "--gpus", "4",
               "--embed-img-per-s-per-gpu", "200")
    eight = run("--rows", "1000000", "--gpu-type", "NVIDIA_L4", "--gpus", "8",
                "--embed-img-per-s-per-gpu", "200")
    assert eight["total"]["wall_h"] < four["total"]["wall_h"]
    # the same GPU work, plus one start-up per extra task
    assert eight["total"]["gpu_h"] - four["total"]["gpu_h"] == pytest.approx(
        4 * plan.TASK_START_S / 3600)
    free = run("--rows", "1000000", "--gpu-type", "NVIDIA_L4", "--gpu-price-per-h", "0",
               "--vcpu-price-per-h", "0", "--gib-price-per-h", "0")
    assert free["total"]["cost_usd"] == pytest.approx(plan.RUN_FEE_USD)
    fast = run("--rows", "1000000", "--gpu-type", "NVIDIA_L4", "--embed-img-per-s-per-gpu",
               "5000", "--embed-decode", "cpu")
    # decode-bound then: 316 img/s per vCPU x 6 vCPU (the embed task default)
    assert "1,896 img/s per task (CPU decode-bound)" in [s["rate"] for s in fast["steps"]]


def test_widths_never_grow_with_the_rows() -> None:
    small, large = run("--rows", "480"), run("--rows", "12800000")
    assert [s["tasks"] for s in large["steps"]] == [1, 32, 8, 1, 1, 1]
    assert all(a <= b for a, b in zip([s["tasks"] for s in small["steps"]],
                                      [s["tasks"] for s in large["steps"]]))


def test_json_output(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", "--rows", "1000", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [s["step"] for s in data["steps"]] == [
        "load", "download", "embed", "write", "index", "report"]


@pytest.mark.parametrize("argv, message", [
    (["--rows", "0"], "--rows 0"),
    (["--rows", "10", "--gpus", "3", "--gpu-count", "2"], "--gpus 3 with --gpu-count 2"),
    (["--rows", "10", "--gpu-type", "NVIDIA_GTX_1080"], "NVIDIA_GTX_1080"),
    (["--rows", "10", "--success-rate", "1.5"], "--success-rate 1.5"),
    (["--rows", "10", "--download-parallelism", "200"], "--download-parallelism = 200"),
    (["--rows", "10", "--gpus", "128"], "(embed tasks) = 128"),
])
def test_bad_input(argv: list[str], message: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["plan", *argv]) == 2
    assert message in capsys.readouterr().err


def test_the_reference_run_plans_within_an_hour() -> None:
    """DataComp-small on 8 L4s, the mission's job: the shape's estimate stays under an hour
    (thumbnails in the download units, no planning tasks); a change that puts work back on
    the critical path shows here."""
    plan = run("--rows", "12800000", "--gpu-type", "NVIDIA_L4", "--gpus", "8")
    assert plan["total"]["wall_h"] <= 1.0
    assert [s["step"] for s in plan["steps"]][1:3] == ["download", "embed"]
