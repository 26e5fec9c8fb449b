"""Fuse a trained AFD-Module into its deploy form, verified on real evaluation features (params:
methods.<method>, fuse.verify_set); the difference is recorded in metrics/fuse/."""

from afd.ops import steps
from stage import run_step

if __name__ == "__main__":
    run_step(__doc__, steps.fuse_method, "backbone", "method")
