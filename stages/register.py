"""Register the deployable classifier (backbone + fused AFD, image in, logits out) as
afd-<backbone> in the MLflow model registry, with ExecuTorch (.pte, XNNPACK) and ONNX exports
checked and attached and the on-device benchmark's comparison programs, then apply the promotion
gate (params: backbones.<backbone>, train.methods)."""

import json

from afd.determinism import pin_cpu_numerics
from afd.io import write_json
from afd.layout import METRICS
from afd.params import load_params
from afd.pipeline import register_backbone

from stage import stage_arguments, stage_main


@stage_main
def main() -> None:
    args = stage_arguments(__doc__, backbone=True).parse_args()
    params = load_params(args.params)
    pin_cpu_numerics(params["numerics"]["threads"])
    evaluation = json.loads((METRICS / "eval" / f"{args.backbone}.json").read_text())
    receipt = register_backbone(params, args.backbone, evaluation)
    write_json(METRICS / "register" / f"{args.backbone}.json", receipt)
    print(f"{receipt['name']} version {receipt['version']}: {receipt['alias']} ({receipt['reason']})")


if __name__ == "__main__":
    main()
