"""Summarise a py-spy collapsed-stack profile (`bench/run.py --py-spy FILE`).

    python bench/stacks.py FILE [--top 40] [--prefix exporter/]

Prints the share of samples by self frame (the function on top of the stack) and, with
`--inclusive`, by any frame on the stack, so that "where does the CPU go" is one table.
"""

from __future__ import annotations

import argparse
from collections import Counter


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("file")
    parser.add_argument("--top", type=int, default=40)
    parser.add_argument("--inclusive", action="store_true")
    parser.add_argument("--match", default="", help="only frames containing this text")
    args = parser.parse_args()
    counts: Counter[str] = Counter()
    total = 0
    with open(args.file) as handle:
        for line in handle:
            stack, _, count = line.rstrip().rpartition(" ")
            samples = int(count)
            frames = stack.split(";")
            total += samples
            if args.inclusive:
                for frame in {f for f in frames if args.match in f}:
                    counts[frame] += samples
            else:
                counts[frames[-1]] += samples
    for frame, samples in counts.most_common(args.top):
        print(f"{samples / total:6.1%}  {frame}")
    print(f"{total} samples")


if __name__ == "__main__":
    main()
