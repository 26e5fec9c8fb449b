"""Evaluate the grid method x set for one backbone: DirectTest and every trained method on the
clean set and each codec's sets (params: eval_sets, train.methods, evaluate)."""

from afd.ops import steps
from stage import run_step

if __name__ == "__main__":
    run_step(__doc__, steps.evaluate, "backbone")
