"""``customgpt data``: list the public datasets and fetch (download + verify) them.

    customgpt data list [--data-dir D] [--cache-dir C]
    customgpt data fetch NAME [NAME ...] [--data-dir D] [--cache-dir C] [--no-progress]
    customgpt data fetch all
"""

from __future__ import annotations

import argparse


def _add_locations(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--data-dir",
        help="mirror folder holding the dataset files (default: $CUSTOMGPT_DATA_DIR)",
    )
    parser.add_argument(
        "--cache-dir",
        help="download folder (default: $CUSTOMGPT_CACHE_DIR/datasets, else ~/.cache/customgpt/datasets)",
    )


def build_parser(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    p_list = sub.add_parser("list", help="show the registered datasets and whether a local copy exists")
    _add_locations(p_list)
    p_fetch = sub.add_parser("fetch", help="download (or find in the mirror) and verify datasets; prints paths")
    p_fetch.add_argument("names", nargs="+", metavar="NAME", help="dataset name(s), or 'all'")
    _add_locations(p_fetch)
    p_fetch.add_argument("--no-progress", action="store_true", help="do not show a download progress bar")


def _human(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    exponent = min(3, (n.bit_length() - 1) // 10)
    return f"{n / 1024**exponent:.1f} {('KiB', 'MiB', 'GiB')[exponent - 1]}"


def run(args: argparse.Namespace) -> int:
    from customgpt.data import registry

    if args.action == "list":
        rows = [("name", "size", "licence", "local copy", "file")]
        for info in registry.DATASETS.values():
            status = registry.local_status(info.name, args.data_dir, args.cache_dir)
            rows.append((info.name, _human(info.size), info.licence, status, info.filename))
        widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
        for row in rows:
            print("  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip())
        mirror = registry.mirror_dir(args.data_dir)
        print(f"\nmirror folder: {mirror if mirror is not None else f'(none; set ${registry.DATA_DIR_ENV} or --data-dir)'}")
        print(f"cache folder:  {registry.dataset_cache_dir(args.cache_dir)}")
        return 0

    names = list(registry.DATASETS) if args.names == ["all"] else args.names
    for name in names:
        registry.get_info(name)  # fail on a typo before downloading anything
    for name in names:
        path = registry.fetch(name, args.data_dir, args.cache_dir, progress=not args.no_progress)
        print(f"{name}\t{path}")
    return 0
