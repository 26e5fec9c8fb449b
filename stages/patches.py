"""DIV2K-C clean patches: seeded random crops of the training photos (params: sources, patches,
seed, and the profile's patch_count)."""

from afd.data import embedded_split, folder_photos, make_patches
from afd.layout import PATCHES
from afd.params import load_params, training_profile

from stage import stage_arguments, stage_main


@stage_main
def main() -> None:
    parser = stage_arguments(__doc__)
    parser.add_argument("--out", default=str(PATCHES / "clean"))
    args = parser.parse_args()
    params = load_params(args.params)
    sources = params["sources"]
    if sources["kind"] == "embedded":
        photos, source = embedded_split(sources["embedded"]["train"], sources["embedded"]["eval"])[0], "embedded"
    else:
        photos, source = folder_photos(sources["train_dir"]), sources["train_dir"]
    count = training_profile(params)["patch_count"]
    size, seed = params["patches"]["size"], params["seed"]
    manifest = make_patches(photos, count, size, seed, args.out, source)
    print(f"{args.out}: {count} patches from {source}, {len(manifest['skipped'])} files skipped")


if __name__ == "__main__":
    main()
