"""Stage `summarize`: gather every model's evaluation into reports/metrics.{csv,json}."""

from __future__ import annotations

import json
from pathlib import Path

from stages._common import cli, load_params, section
from vitlab.atomic import atomic_path, write_json
from vitlab.errors import VitlabError
from vitlab.report import eval_rows, headline, metrics_table


@cli
def main() -> None:
    models = section(load_params(), "models")
    rows = []
    for model in models:
        path = Path("reports/eval") / f"{model}.json"
        if not path.is_file():
            raise VitlabError(f"{path} is missing; run `dvc repro evaluate@{model}`")
        rows += eval_rows(json.loads(path.read_text()))
    df = metrics_table(rows)
    with atomic_path("reports/metrics.csv") as tmp:
        df.to_csv(tmp, index=False)
    write_json("reports/metrics.json", headline(df))
    print(df[df["kind"] != "epoch"].to_string(index=False))


if __name__ == "__main__":
    main()
