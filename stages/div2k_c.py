"""DIV2K-C: the clean patches as JPEG at each training quality (params: patches.qualities)."""

from afd.ops import steps
from stage import run_step

if __name__ == "__main__":
    run_step(__doc__, steps.compress_patches)
