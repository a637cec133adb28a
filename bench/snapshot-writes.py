#!/usr/bin/env python3
"""Bytes a node's snapshot builds write over a long ingest, under two layering rules.

A model, not a measurement: it replays the build rule of `state_machine::write_own_snapshot`
with sizes read off a measured run (BENCHMARKS.md, twentieth pass): each snapshot (one per
100,000 events) changes about LAYER_MB of records, and the whole file holds about
WHOLE_MB_PER_WINDOW per 100,000 events of history. A build writes a layer while the layers
stay smaller together than the whole file below them, otherwise a new whole file.

  bound   the nineteenth pass: a plain layer on the newest file, at most 8 layers
  counter the twentieth pass on: a layer takes in the newest layers no larger than it
          (`snapshot_file::layers_to_fold`)

  bench/snapshot-writes.py [EVENTS_IN_MILLIONS...]     e.g. bench/snapshot-writes.py 1 3 10 30
"""
import sys

MAX_LAYERS = 8
LAYER_MB = 12.0
WHOLE_MB_PER_WINDOW = 11.3


def layers_to_fold(sizes, estimate):
    """The rule in crates/node/src/snapshot_file.rs; sizes newest first."""
    folded, size = 0, estimate
    while folded < len(sizes):
        too_many = len(sizes) - folded + 1 > MAX_LAYERS
        if sizes[folded] > size and not too_many:
            break
        size += sizes[folded]
        folded += 1
    return folded


def builds(rule, windows):
    """MB written by each build, one build per 100,000 events."""
    base, layers, written = None, [], []
    for window in range(1, windows + 1):
        whole = WHOLE_MB_PER_WINDOW * window
        if base is None or sum(layers) + LAYER_MB > base:
            base, layers = whole, []
            written.append(whole)
        elif rule == "bound":
            if len(layers) < MAX_LAYERS:
                layers.insert(0, LAYER_MB)
                written.append(LAYER_MB)
            else:
                base, layers = whole, []
                written.append(whole)
        else:
            folded = layers_to_fold(layers, LAYER_MB)
            size = LAYER_MB + sum(layers[:folded])
            layers = [size] + layers[folded:]
            written.append(size)
    return written


def main():
    millions = [float(a) for a in sys.argv[1:]] or [1, 3, 10, 30]
    print(f"{'events':>8} | {'bound: total GB':>16} {'largest MB':>10} | {'counter: total GB':>17} {'largest MB':>10}")
    for m in millions:
        windows = int(m * 10)
        row = [f"{m:>7g}M"]
        for rule in ("bound", "counter"):
            w = builds(rule, windows)
            row.append(f"{sum(w) / 1000:>16.2f} {max(w):>10.0f}")
        print(" | ".join(row))


if __name__ == "__main__":
    main()
