"""Embed a folder of chest X-rays with an exported pacx backbone.

    python recipes/embed.py --backbone runs/pacx/backbone --images cxr_pngs/ --out embeddings.npy

Writes ``embeddings.npy`` (N, D) and ``embeddings.csv`` (``path,row,error``; unreadable files
get ``row = -1``) and prints a report listing every file that could not be read.
"""

from __future__ import annotations

import argparse
import sys

from pacx.engine import embed_folder


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", required=True, help="folder written by pacx.engine.export_backbone")
    parser.add_argument("--images", required=True, help="folder of PNG/JPEG (DICOM with pydicom) files")
    parser.add_argument("--out", required=True, help="destination .npy (index CSV beside it)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-recursive", action="store_true", help="ignore sub-folders")
    args = parser.parse_args(argv)
    report = embed_folder(
        args.backbone, args.images, args.out, batch_size=args.batch_size, device=args.device,
        recursive=not args.no_recursive,
    )
    print(report.summary())
    return 0 if report.num_embedded else 2


if __name__ == "__main__":
    sys.exit(main())
