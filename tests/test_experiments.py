"""`dvc exp run -S ...` on the micro profile gives an experiment `dvc exp show` compares."""

from __future__ import annotations

import json

from tests.conftest import dvc, make_project


def test_exp_run_is_listed_with_its_params_and_headline_metrics(tmp_path):
    root = make_project(tmp_path)
    dvc("exp", "run", "-n", "base", cwd=root)
    dvc("exp", "run", "-n", "lr-low", "-S", "train.lr=0.001", cwd=root)
    shown = json.loads(dvc("exp", "show", "--json", cwd=root).stdout)
    exps = {}
    for commit in shown:
        for exp in commit.get("experiments") or []:
            for rev in exp["revs"]:
                exps[rev["name"]] = rev["data"]
    assert {"base", "lr-low"} <= set(exps)
    lr = {n: exps[n]["params"]["params.yaml"]["data"]["train"]["lr"] for n in ("base", "lr-low")}
    assert lr == {"base": 0.003, "lr-low": 0.001}
    metrics = {n: exps[n]["metrics"]["reports/metrics.json"]["data"] for n in ("base", "lr-low")}
    for m in metrics.values():
        assert 0 <= m["M16"]["uniform_soup"]["test_acc"] <= 1
    assert metrics["base"] != metrics["lr-low"]
