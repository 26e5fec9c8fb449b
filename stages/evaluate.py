"""Evaluate the grid method x set for one backbone: DirectTest and every trained method on the
clean, JPEG, multi-compression and AVIF sets (params: eval_sets, train.methods, evaluate)."""

from afd.determinism import pin_cpu_numerics
from afd.io import write_json
from afd.layout import METRICS
from afd.params import load_params
from afd.pipeline import evaluate_backbone, evaluation_record, image_outcomes, log_evaluation, trained_methods

from stage import stage_arguments, stage_main


@stage_main
def main() -> None:
    args = stage_arguments(__doc__, backbone=True).parse_args()
    params = load_params(args.params)
    pin_cpu_numerics(params["numerics"]["threads"])
    trained = trained_methods(params, args.backbone)
    outcomes = evaluate_backbone(params, trained)
    record = evaluation_record(params, trained, outcomes)
    write_json(METRICS / "eval" / f"{args.backbone}.images.json", image_outcomes(params, outcomes))
    write_json(METRICS / "eval" / f"{args.backbone}.json", record)
    log_evaluation(params, trained, record)
    print(f"{args.backbone}: {len(record['methods'])} methods x {len(record['grid']['direct'])} sets evaluated")


if __name__ == "__main__":
    main()
