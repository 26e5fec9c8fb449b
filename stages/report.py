"""The Markdown report and its figures (reports/), from metrics/eval/*.json, metrics/train/ and
metrics/efficiency.json."""

import json
from pathlib import Path

import mlflow

from afd.layout import METRICS, backbone_methods
from afd.params import load_params
from afd.report import write_report
from afd.tracking import git_commit, tracked_run

from stage import stage_arguments, stage_main


@stage_main
def main() -> None:
    parser = stage_arguments(__doc__)
    parser.add_argument("--out", default="reports/report.md")
    args = parser.parse_args()
    params = load_params(args.params)
    results = [json.loads((METRICS / "eval" / f"{name}.json").read_text()) for name in params["train"]["backbones"]]
    images = {name: json.loads((METRICS / "eval" / f"{name}.images.json").read_text())
              for name in params["train"]["backbones"]}
    training = {backbone: {method: json.loads((METRICS / "train" / backbone / f"{method}.json").read_text())
                           for method in backbone_methods(params, backbone)} for backbone in params["train"]["backbones"]}
    efficiency = json.loads((METRICS / "efficiency.json").read_text())
    out = Path(args.out)
    write_report(results, images, training, efficiency, out, out.parent / "figures")
    with tracked_run("report", tags={"stage": "report", "git_commit": git_commit()}):
        mlflow.log_artifacts(str(out.parent), artifact_path="report")
    print(f"{out}: written")


if __name__ == "__main__":
    main()
