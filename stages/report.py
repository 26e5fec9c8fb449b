"""The Markdown report and its figures (reports/), from metrics/eval/*.json and
metrics/efficiency.json."""

import argparse
import json
from pathlib import Path

from layout import METRICS
from params import load_params, stage_main

from afd.report import write_report


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
    print(f"{out}: written")


if __name__ == "__main__":
    main()
