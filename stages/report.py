"""The Markdown report and its figures (reports/), from metrics/eval/*.json and
metrics/efficiency.json."""

import argparse
import json
from pathlib import Path

import mlflow
from layout import METRICS
from params import load_params, stage_main

from afd.report import write_report
from afd.tracking import git_commit, tracked_run


@stage_main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", default="reports/report.md")
    args = parser.parse_args()
    params = load_params(args.params)
    results = [json.loads((METRICS / "eval" / f"{name}.json").read_text()) for name in params["train"]["backbones"]]
    efficiency = json.loads((METRICS / "efficiency.json").read_text())
    out = Path(args.out)
    write_report(results, efficiency, out, out.parent / "figures")
    with tracked_run("report", tags={"stage": "report", "git_commit": git_commit()}):
        mlflow.log_artifacts(str(out.parent), artifact_path="report")
    print(f"{out}: written")


if __name__ == "__main__":
    main()
