"""One compressed set of a clean set: JPEG at a quality, multi-compression CT times, or AVIF
(params: seed, eval_sets.jpeg_qualities for multi; with the flags also eval_sets.resave_q85 and
sources.imagenet_c_dir, for the evaluation JPEG sets only)."""

from afd.data import DEGRADED_KINDS, copy_imagenet_c, make_degraded_set
from afd.params import load_params

from stage import stage_arguments, stage_main


@stage_main
def main() -> None:
    parser = stage_arguments(__doc__)
    parser.add_argument("--kind", required=True, choices=DEGRADED_KINDS)
    parser.add_argument("--level", required=True, type=int, help="quality, or CT for multi")
    parser.add_argument("--clean", required=True, help="the clean set's folder")
    parser.add_argument("--out", required=True)
    parser.add_argument(
        "--imagenet-c", action="store_true",
        help="jpeg: copy the released ImageNet-C files when sources.imagenet_c_dir is set",
    )
    parser.add_argument(
        "--resave-q85", action="store_true", help="jpeg: honour eval_sets.resave_q85"
    )
    args = parser.parse_args()
    if args.kind != "jpeg" and (args.imagenet_c or args.resave_q85):
        parser.error("--imagenet-c and --resave-q85 apply to --kind jpeg only")
    params = load_params(args.params)
    imagenet_c_dir = params["sources"]["imagenet_c_dir"] if args.imagenet_c else None
    if args.kind == "jpeg" and imagenet_c_dir:
        copy_imagenet_c(args.clean, args.out, args.level, imagenet_c_dir)
        print(f"{args.out}: released ImageNet-C files at quality {args.level}")
        return
    # Only multi-compression draws (seeded) qualities: other kinds must not depend on those keys.
    multi = {"seed": params["seed"], "multi_qualities": params["eval_sets"]["jpeg_qualities"]} if args.kind == "multi" else {}
    make_degraded_set(
        args.clean,
        args.out,
        args.kind,
        args.level,
        resave_q85=args.resave_q85 and params["eval_sets"]["resave_q85"],
        **multi,
    )
    print(f"{args.out}: {args.kind} {args.level} of {args.clean}")


if __name__ == "__main__":
    main()
