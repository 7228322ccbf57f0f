"""``ett convert`` (also ``ett-convert``): the converters as one command (``llava``, ``vqav2``, ``folder``)."""

from __future__ import annotations

import argparse
import logging

from ett_lightning.convert.folder import convert_folder
from ett_lightning.convert.llava import convert_llava
from ett_lightning.convert.shard_output import ShardOutput, format_summary
from ett_lightning.convert.vqav2 import convert_vqav2
from ett_lightning.user_errors import UserError


def parser() -> argparse.ArgumentParser:
    root = argparse.ArgumentParser(prog="ett convert", description="Write webdataset shards that "
                                   "ImageTextDataModule reads from LLaVA JSON, VQAv2 files or an image folder.")
    commands = root.add_subparsers(dest="format", required=True)
    llava = commands.add_parser("llava", help="LLaVA-format conversations -> conversation shards")
    llava.add_argument("--json", required=True, help="LLaVA JSON list (or .jsonl) of {id, image, conversations}")
    llava.add_argument("--image-root", required=True, help="folder the entries' image paths are relative to")
    vqav2 = commands.add_parser("vqav2", help="official VQAv2 questions + annotations -> VQA shards")
    vqav2.add_argument("--questions", required=True, help="e.g. v2_OpenEnded_mscoco_val2014_questions.json")
    vqav2.add_argument("--annotations", required=True, help="e.g. v2_mscoco_val2014_annotations.json")
    vqav2.add_argument("--image-root", required=True, help="folder of the COCO images (e.g. val2014/)")
    folder = commands.add_parser("folder", help="image folder + captions file -> caption shards")
    folder.add_argument("--images", required=True, help="folder the captions file's image names are relative to")
    folder.add_argument("--captions", required=True, help="captions file: .jsonl, .csv or .tsv with a header")
    folder.add_argument("--image-column", help="column with the image file name (default: found by name)")
    folder.add_argument("--caption-column", help="column with the caption (default: found by name)")
    for command in (llava, vqav2, folder):
        command.add_argument("--output", required=True, help="folder the shards go to")
        command.add_argument("--split", default="train", help="shard name prefix: OUTPUT/SPLIT-000000.tar")
        command.add_argument("--samples-per-shard", type=int, default=10000)
        command.add_argument("--max-shard-bytes", type=float, default=1e9,
                             help="a shard is closed once it holds this many bytes")
    return root


def main(argv: list[str] | None = None) -> None:
    """Runs one conversion; a source or output it cannot use is a :class:`UserError` (``ett convert`` prints it as one
    line, exit status 2)."""
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(message)s")
    try:
        convert(args)
    except (OSError, ValueError) as problem:
        raise UserError(str(problem)) from problem


def convert(args: argparse.Namespace) -> None:
    output = ShardOutput(args.output, args.split, args.samples_per_shard, args.max_shard_bytes)
    if args.format == "llava":
        summary = convert_llava(args.json, args.image_root, output)
    elif args.format == "vqav2":
        summary = convert_vqav2(args.questions, args.annotations, args.image_root, output)
    else:
        summary = convert_folder(args.images, args.captions, output, args.image_column, args.caption_column)
    print(format_summary(summary, args.output))
