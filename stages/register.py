"""Register the deployable classifier (backbone + fused AFD, image in, logits out) as afd-<backbone>
in the MLflow model registry with its checked deploy exports, then apply the promotion gate
(params: backbones.<backbone>, register)."""

from afd.ops import steps
from stage import run_step

if __name__ == "__main__":
    run_step(__doc__, steps.register, "backbone")
