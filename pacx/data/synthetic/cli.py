"""Command line: ``python -m pacx.data.synthetic --out DIR ...`` generates (or reuses) a cohort."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence

from .cohort import make_cohort
from .figures import plot_sample_patients

__all__ = ["main"]


def _parse_fractions(text: str) -> dict[str, float]:
    out = {}
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep:
            raise argparse.ArgumentTypeError(f"expected split=fraction pairs, got {item!r}")
        out[key.strip()] = float(value)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: ``python -m pacx.data.synthetic --out DIR ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m pacx.data.synthetic",
        description=(
            "Generate (or reuse) a synthetic paired CXR/ECG/labs cohort in the Symile-MIMIC on-disk "
            "layout. The cohort is written to DIR/cohort_<hash>/ (hash of the parameters); an identical "
            "cohort already there is reused. Prints the cohort root and the split sizes."
        ),
    )
    parser.add_argument("--out", required=True, help="folder that holds cohorts (created if needed)")
    parser.add_argument("--n-patients", type=int, default=4000, help="number of patients (default 4000)")
    parser.add_argument("--image-size", type=int, default=64, help="CXR side in pixels, >= 16 (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--split-fractions",
        type=_parse_fractions,
        default=None,
        help="e.g. train=0.5,val=0.05,test=0.1,probe_train=0.15,probe_val=0.05,probe_test=0.15 (the default)",
    )
    parser.add_argument("--force", action="store_true", help="regenerate even if an identical cohort exists")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="rendering threads (default: available cores, at most 4); the bytes written do not depend on it",
    )
    parser.add_argument("--figure", default=None, help="also save a sample-patients PNG to this path")
    args = parser.parse_args(argv)
    try:
        root = make_cohort(
            args.out,
            args.n_patients,
            args.image_size,
            args.seed,
            args.split_fractions,
            args.force,
            num_workers=args.workers,
        )
    except ValueError as err:
        parser.error(str(err))
    meta = json.loads((root / "cohort.json").read_text(encoding="utf-8"))
    print(root)
    for split, count in meta["splits"].items():
        print(f"  {split:<12s} {count:6d} patients")
    print(f"  generation_seconds {meta['generation_seconds']}")
    if args.figure:
        print(plot_sample_patients(root, args.figure))
    return 0
