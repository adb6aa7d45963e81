"""Stage `summarize`: gather every model's evaluation into reports/metrics.{csv,json}."""

from __future__ import annotations

from stages._common import cli, load_params
from vitlab.core import contract
from vitlab.core.atomic import atomic_path, write_json
from vitlab.report import eval_rows, headline, metrics_table, score_columns


@cli
def main() -> None:
    params = load_params()
    rows, extra = [], {}
    for model in params.models:
        rows += eval_rows(contract.read_json(contract.eval_report(model), f"evaluate@{model}"))
        scores = contract.read_json(contract.map_scores(model), f"render_attention@{model}")
        for variant, columns in score_columns(scores).items():
            extra[(model, variant)] = columns
    cap_rows = contract.read_json(contract.CAPTION_METRICS, "render_captions")["rows"]
    df = metrics_table(rows + cap_rows, extra)
    with atomic_path(contract.METRICS_CSV) as tmp:
        df.to_csv(tmp, index=False)
    out = headline(df)
    out["captioner"] = {
        r["variant"]: {k: v for k, v in r.items() if k not in ("model", "variant", "kind")}
        for r in cap_rows
    }
    write_json(contract.METRICS_JSON, out)
    print(df[df["kind"] != "epoch"].to_string(index=False))


if __name__ == "__main__":
    main()
