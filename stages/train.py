"""Train one method for one backbone on DIV2K-C, and refuse it if it did not learn (params: seed,
profile, methods.<method>, train.max_loss_ratio, train.min_alive_fraction). A killed run resumes
from checkpoints/<backbone>/<method>/state.pt when re-run."""

from afd.ops import steps
from stage import run_step

if __name__ == "__main__":
    run_step(__doc__, steps.train_method, "backbone", "method")
