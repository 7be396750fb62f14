"""Measure host memory of loading a big synthetic InternImage checkpoint (sharded safetensors).

    python scripts/measure_loading.py --model h --dtype bfloat16 --directory /tmp/internimage_h --repeats 2

Writes a randomly initialised classifier with `save_pretrained(max_shard_size=...)` (skipped when the directory
already holds one), then loads it `--repeats` times, each in a fresh process, and prints the peak resident set of
`from_pretrained` (after reading every weight once) above the one after the imports, against the checkpoint size.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
from memory_measure import run_isolated  # noqa: E402

LOADING = "measure_loading"


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="h", help="preset: tiny, t, s, b, l, xl, h, g")
    parser.add_argument("--dtype", default="bfloat16", choices=("float32", "bfloat16", "float16"))
    parser.add_argument("--directory", required=True)
    parser.add_argument("--max_shard_size", default="500MB")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    if not (Path(args.directory) / "model.safetensors.index.json").exists():
        written = run_isolated(
            LOADING,
            {"action": "write", "model": args.model, "directory": args.directory, "dtype": args.dtype,
             "max_shard_size": args.max_shard_size},
            timeout=3600,
        )  # fmt: skip
        print(json.dumps(written))
    for _ in range(args.repeats):
        loaded = run_isolated(LOADING, {"action": "load", "directory": args.directory, "dtype": args.dtype}, 3600)
        print(
            f"checkpoint {loaded['checkpoint_bytes'] / 2**30:.3f} GiB, "
            f"load peak {loaded['peak_bytes'] / 2**30:.3f} GiB "
            f"({loaded['peak_over_checkpoint']:.3f}x), {loaded['seconds']:.1f} s, {loaded['parameters']} parameters"
        )


if __name__ == "__main__":
    main()
