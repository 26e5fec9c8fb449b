"""The Markdown report and its figures (reports/), from metrics/eval/, metrics/train/ and
metrics/efficiency.json."""

from afd.ops import steps
from stage import run_step

if __name__ == "__main__":
    run_step(__doc__, steps.report)
