"""Clean evaluation images: ImageNet-C preprocessing of the eval folder, or grid views of each
embedded eval photo (params: sources)."""

from afd.ops import steps
from stage import run_step

if __name__ == "__main__":
    run_step(__doc__, steps.make_eval_clean_set)
