"""Check a manifest locally before dropping it in the inbox: `python -m include.check_manifest manifest.csv`.

Exit status: 0 every row accepted, 2 some rows would be quarantined, 1 the file itself is unusable. The
verdict is the pipeline's final one (include.manifest.full_verdict): device CSRs are parsed and verified too.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from include.catalog import load_catalog
from include.errors import PipelineError
from include.manifest import full_verdict, quarantine_csv, read_manifest
from include.settings import Settings


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m include.check_manifest", description=__doc__.splitlines()[0]
    )
    parser.add_argument("manifest", type=Path)
    parser.add_argument("--catalog", default=Settings.from_env().catalog_path, help="product catalog YAML")
    parser.add_argument("--product", help="treat every row as this catalog model")
    parser.add_argument("--quarantine", type=Path, help="write the refused rows (with reasons) to this CSV")
    parser.add_argument("--show", type=int, default=20, help="refused rows to print (default 20)")
    args = parser.parse_args(argv)
    try:
        table = read_manifest(args.manifest.read_bytes())
        result = full_verdict(table, load_catalog(args.catalog), product=args.product)
    except PipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:  # the manifest or the catalog cannot be read: which one, and why
        print(f"error: cannot read {exc.filename}: {exc.strerror}", file=sys.stderr)
        return 1
    print(
        json.dumps(
            {
                "rows": result.rows,
                "accepted": result.accepted.num_rows,
                "quarantined": len(result.quarantined),
                "reasons": result.reasons,
                "ignored_columns": result.ignored_columns,
            }
        )
    )
    for row, code, sentence in result.quarantined[: args.show]:
        print(f"row {row}: {code}: {sentence}")
    if args.quarantine:
        args.quarantine.write_bytes(quarantine_csv(table, result.quarantined))
    return 2 if result.quarantined else 0


if __name__ == "__main__":
    sys.exit(main())
