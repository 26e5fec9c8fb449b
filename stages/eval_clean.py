"""Clean evaluation images: ImageNet-C preprocessing of the eval folder, or several grid views of
each embedded eval photo (params: sources)."""

from afd.data import embedded_split, image_folder, make_eval_clean
from afd.layout import EVAL
from afd.params import load_params

from stage import stage_arguments, stage_main


@stage_main
def main() -> None:
    parser = stage_arguments(__doc__)
    parser.add_argument("--out", default=str(EVAL / "clean"))
    args = parser.parse_args()
    sources = load_params(args.params)["sources"]
    if sources["kind"] == "embedded":
        photos = embedded_split(sources["embedded"]["train"], sources["embedded"]["eval"])[1]
        source, view_sizes = "embedded", sources["embedded"]["view_sizes"]
    else:
        photos, source, view_sizes = image_folder(sources["eval_dir"]), sources["eval_dir"], []
    manifest = make_eval_clean(photos, args.out, view_sizes, sources["max_eval_images"], source)
    labelled = sum(record["label"] is not None for record in manifest["images"])
    print(
        f"{args.out}: {len(manifest['images'])} images ({labelled} labelled) from {source}, "
        f"{len(manifest['skipped'])} files skipped"
    )


if __name__ == "__main__":
    main()
