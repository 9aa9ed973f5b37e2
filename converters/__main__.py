"""python -m converters NAME [--force] [--source FILE]

Converts a model's weights into an Orbax checkpoint under checkpoints/ (or
$LEAM_JAX_CHECKPOINTS). Without --source the weights come from the registry
package named in the converter and are checked against checkpoints/manifest.json.
"""

import argparse
import sys

from converters.build import CONVERTERS, ensure_converted


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m converters", description=__doc__.split("\n\n")[1])
    p.add_argument("names", nargs="+", choices=sorted(CONVERTERS) + ["all"], help="model(s) to convert")
    p.add_argument("--force", action="store_true", help="convert even if a valid checkpoint exists")
    p.add_argument("--source", help="convert this local file instead of the registry package (one model)")
    args = p.parse_args(argv)
    names = sorted(CONVERTERS) if "all" in args.names else args.names
    if args.source and len(names) != 1:
        p.error("--source takes exactly one model name")
    try:
        for name in names:
            ensure_converted(name, force=args.force, source_file=args.source)
    except (ValueError, RuntimeError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
