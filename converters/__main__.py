"""python -m converters NAME [--force] [--source FILE [--name NEW]] [--pin]

Converts a model's weights into an Orbax checkpoint (see BUILD.md, "Convert
weights", for where it goes). Without --source the weights come from the
registry package named in the converter, checked against the sha256s pinned
in the package's manifest.json.
"""

import argparse
import json
import sys

from converters import CONVERTERS
from leam_jax.weights import manifest
from leam_jax.weights.convert import ensure_converted, pin_entry


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m converters", description=__doc__.split("\n\n")[1])
    p.add_argument("names", nargs="+", choices=sorted(CONVERTERS) + ["all"],
                   help="model(s) to convert; all: every registry model the manifest pins")
    p.add_argument("--force", action="store_true", help="convert even if a valid checkpoint exists")
    p.add_argument("--source", help="convert this local file instead of the registry package (one model)")
    p.add_argument("--name", help="with --source: save the checkpoint under this new name (default: the model's)")
    p.add_argument("--pin", action="store_true",
                   help="print the manifest entries of these registry models, from the packages as fetched now "
                        "(for maintainers to review and commit; writes no checkpoint)")
    args = p.parse_args(argv)
    if args.source and (len(args.names) != 1 or "all" in args.names):
        p.error("--source takes exactly one model name")
    if args.name and not args.source:
        p.error("--name names the conversion of a --source file")
    try:
        names = sorted(manifest.read_pinned()) if "all" in args.names else args.names
        if args.pin:
            print(json.dumps({n: pin_entry(n) for n in names}, indent=2, sort_keys=True))
            return 0
        for name in names:
            ensure_converted(name, force=args.force, source_file=args.source, save_as=args.name)
    except (ValueError, RuntimeError, KeyError) as e:  # every weights error is a RuntimeError (WeightsError)
        print(f"error: {e.args[0] if isinstance(e, KeyError) and e.args else e}", file=sys.stderr)
        return 2  # as python -m leam_jax.main: one line, exit code 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
