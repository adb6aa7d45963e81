"""Stage `summarize`: gather every model's evaluation into reports/metrics.{csv,json}."""

from __future__ import annotations

import json
from pathlib import Path

from stages._common import cli, load_params, section
from vitlab.atomic import atomic_path, write_json
from vitlab.errors import VitlabError
from vitlab.grounding import metric_columns
from vitlab.report import eval_rows, headline, metrics_table


@cli
def main() -> None:
    models = section(load_params(), "models")
    rows, extra = [], {}
    for model in models:
        path = Path("reports/eval") / f"{model}.json"
        if not path.is_file():
            raise VitlabError(f"{path} is missing; run `dvc repro evaluate@{model}`")
        rows += eval_rows(json.loads(path.read_text()))
        scores = Path("reports/figures") / model / "scores.json"
        if not scores.is_file():
            raise VitlabError(f"{scores} is missing; run `dvc repro render_attention@{model}`")
        for variant, columns in metric_columns(json.loads(scores.read_text())).items():
            extra[(model, variant)] = columns
    cap_path = Path("reports/captions/metrics.json")
    if not cap_path.is_file():
        raise VitlabError(f"{cap_path} is missing; run `dvc repro render_captions`")
    cap_rows = json.loads(cap_path.read_text())["rows"]
    df = metrics_table(rows + cap_rows, extra)
    with atomic_path("reports/metrics.csv") as tmp:
        df.to_csv(tmp, index=False)
    out = headline(df)
    out["captioner"] = {
        r["variant"]: {k: v for k, v in r.items() if k not in ("model", "variant", "kind")}
        for r in cap_rows
    }
    write_json("reports/metrics.json", out)
    print(df[df["kind"] != "epoch"].to_string(index=False))


if __name__ == "__main__":
    main()
