"""benchmarks/ablation.py: variants, reuse of finished runs, the Markdown table."""

import json
import os
import sys

import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
import ablation  # noqa: E402


def test_finished_variants_are_read_back_not_rerun(tmp_path, monkeypatch):
    metrics = {"amodal/AP50": 0.5, "amodal/AP": 0.25, "modal/AP": 0.2, "occlusion/f1": 0.7,
               "order/accuracy": 0.4, "order/accuracy_decided": 0.55, "order/recall": 0.3}
    workdir = tmp_path / ablation.slug("no GLM")
    workdir.mkdir()
    (workdir / "metrics.json").write_text(json.dumps(metrics))
    monkeypatch.setattr(ablation.subprocess, "run", lambda *a, **k: pytest.fail("reran"))
    assert ablation.run_variant("no GLM", ["--config.model.glm=False"], str(tmp_path),
                                None) == metrics
    text = ablation.table({"no GLM": metrics, "default": {}})
    lines = text.splitlines()
    assert lines[0].startswith("| variant | AP50 | AP | modal AP | occl. F1 | order acc.")
    assert lines[2] == "| no GLM | 0.500 | 0.250 | 0.200 | 0.700 | 0.400 | 0.550 | 0.300 |"
    assert lines[3] == "| default | " + " | ".join(["-1.000"] * 7) + " |"


def test_a_failing_variant_names_its_log(tmp_path, monkeypatch):
    class Failed:
        returncode = 3

    monkeypatch.setattr(ablation.subprocess, "run", lambda *a, **k: Failed())
    with pytest.raises(SystemExit, match="'K = 2' failed .exit 3.; see .*k___2.*ablation.log"):
        ablation.run_variant("K = 2", ablation.VARIANTS["K = 2"], str(tmp_path), 10)


def test_every_variant_overrides_existing_config_fields():
    import importlib.util
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    spec = importlib.util.spec_from_file_location("cfg", os.path.join(root, "configs",
                                                                      "synthetic.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    for overrides in ablation.VARIANTS.values():
        for override in overrides:
            path = override.split("=")[0][len("--config."):].split(".")
            node = config
            for key in path:
                node = node[key]  # KeyError names a field the config lost
