"""One codec's evaluation sets: the clean evaluation images at each of its levels (params: seed,
eval_sets.<codec>, sources.imagenet_c_dir)."""

from afd.ops import steps
from stage import run_step

if __name__ == "__main__":
    run_step(__doc__, steps.compress_eval_sets, "codec")
