"""Tests of benchmarks/check_readme.py and of the table the main job writes to metrics.md."""

import importlib.util
import os

import pytest

from sln_jax import demo

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_spec = importlib.util.spec_from_file_location(
    "check_readme", os.path.join(REPO, "benchmarks", "check_readme.py"))
check_readme = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(check_readme)

METRICS = {
    "amodal/AP": 0.2891, "amodal/AP50": 0.528, "amodal/AP75": 0.285, "amodal/AR100": 0.61,
    "amodal/AR100_none": 0.605, "amodal/AR100_partial": 0.463, "amodal/AR100_heavy": 0.2,
    "modal/AP": 0.25, "modal/AP50": 0.471, "occlusion/accuracy": 0.639, "occlusion/f1": 0.613,
    "order/accuracy": 0.48, "order/accuracy_decided": 0.5364, "order/recall": 0.261,
    "order/pairs": 123.0, "amodal/APs": 0.1,
}

README = """# project

## Results of the main command (measured)

Some words.

| metric | value | metric | value |
|---|---|---|---|
| amodal/AP | 0.289 | modal/AP | 0.250 |
| amodal/AP50 | 0.528 | modal/AP50 | 0.471 |
| amodal/AP75 | 0.285 | occlusion/accuracy | 0.639 |
| amodal/AR100 | 0.610 | occlusion/f1 | 0.613 |
| amodal/AR100_none | 0.605 | order/accuracy | 0.480 (123 pairs) |
| amodal/AR100_partial | 0.463 | order/accuracy_decided | 0.536 |
| amodal/AR100_heavy | 0.200 | order/recall | 0.261 |

More words.

## Tests

| what | figure |
|---|---|
| x | 1 |
"""


def test_results_table_is_the_readme_format():
    table = demo.results_table(METRICS)
    assert table.splitlines()[5] == ("| amodal/AR100 | 0.610 | occlusion/f1 | 0.613 |")
    assert "| order/accuracy | 0.480 (123 pairs) |" in table
    assert check_readme.parse_table(table) == check_readme.readme_table(README)
    parsed = check_readme.parse_table(table)
    assert parsed["order/pairs"] == 123 and parsed["order/accuracy_decided"] == 0.536
    assert "amodal/APs" not in parsed  # only the README's metrics


def test_compare_names_each_differing_metric():
    readme = check_readme.readme_table(README)
    assert check_readme.compare(readme, dict(readme), 0.02) == []
    run = dict(readme, **{"amodal/AP": 0.31, "occlusion/f1": 0.63, "order/pairs": 130.0})
    del run["order/recall"]
    run["modal/AR100"] = 0.5
    problems = check_readme.compare(readme, run, 0.02)
    names = [p.split(":")[0] for p in problems]
    # AP differs by 0.021 > 0.02; f1 by 0.017 (within); pairs by 7 > 2% of 130.
    assert names == ["amodal/AP", "modal/AR100", "order/pairs", "order/recall"]
    assert check_readme.compare(readme, run, 0.06) == [p for p in problems
                                                        if p.split(":")[0] in ("modal/AR100",
                                                                              "order/recall")]


def test_main_exit_codes(tmp_path, capsys):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    workdir = tmp_path / "w"
    workdir.mkdir()
    assert check_readme.main(["--workdir", str(workdir), "--readme", str(readme)]) == 2
    demo.write_results_table(str(workdir), METRICS)
    assert check_readme.main(["--workdir", str(workdir), "--readme", str(readme)]) == 0
    demo.write_results_table(str(workdir), dict(METRICS, **{"order/recall": 0.3}))
    assert check_readme.main(["--workdir", str(workdir), "--readme", str(readme)]) == 1
    out = capsys.readouterr().out
    assert "order/recall: README 0.261, run 0.3" in out and "amodal/AP:" not in out
    assert check_readme.main(["--workdir", str(workdir), "--readme", str(readme),
                              "--tolerance", "0.05"]) == 0


def test_malformed_tables_are_errors():
    with pytest.raises(ValueError, match="no '## Results of the main command' section"):
        check_readme.readme_table("# nothing\n")
    with pytest.raises(ValueError, match="not a metric and a number"):
        check_readme.parse_table("| metric | value |\n|---|---|\n| amodal/AP | n/a |\n")


def test_run_is_timed_against_the_budget(tmp_path, monkeypatch, capsys):
    """--run times the main job: over --budget it fails (exit 1) even when the table agrees;
    within budget it passes; a failing job is exit 2."""
    readme = tmp_path / "README.md"
    readme.write_text(README)
    workdir = tmp_path / "w"
    workdir.mkdir()
    clock = {"now": 0.0}
    calls = []

    def fake_job(command, cwd):
        calls.append(command)
        demo.write_results_table(str(workdir), METRICS)
        clock["now"] += clock["job_seconds"]
        return clock.get("status", 0)

    monkeypatch.setattr(check_readme.subprocess, "call", fake_job)
    monkeypatch.setattr(check_readme.time, "monotonic", lambda: clock["now"])
    args = ["--workdir", str(workdir), "--readme", str(readme), "--run", "--budget", "600"]
    clock["job_seconds"] = 540.0
    assert check_readme.main(args) == 0
    assert calls[-1][1:] == ["-m", "sln_jax.demo", f"--workdir={workdir}"]
    assert "main job: 540 s end to end (budget 600 s)" in capsys.readouterr().out
    clock["job_seconds"] = 640.0
    assert check_readme.main(args) == 1
    assert "took 640 s, over its budget of 600 s" in capsys.readouterr().out
    clock["status"] = 3
    assert check_readme.main(args) == 2
