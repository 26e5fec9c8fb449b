"""DIV2K-C clean patches: seeded random crops of the training photos (params: sources, patches.size,
seed, and the profile's patch_count)."""

from afd.ops import steps
from stage import run_step

if __name__ == "__main__":
    run_step(__doc__, steps.make_patch_set)
