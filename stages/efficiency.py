"""Efficiency (paper Table VII) at each efficiency backbone's tap: params, MACs and CPU latency of
the backbone and each method, measured in one run (params: efficiency)."""

from afd.ops import steps
from stage import run_step

if __name__ == "__main__":
    run_step(__doc__, steps.measure_efficiency)
