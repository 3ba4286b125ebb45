"""Accuracy of gpuplan against published measurements (reference/calibration.md).

Prints the memory section (per-GPU memory vs published, with the bytes/param rules of thumb) and the
throughput section (tokens/s vs published, with the 6N-at-40%-MFU shortcut), row by row, with the
medians and the worst rows. Run: python benchmarks/accuracy.py
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks import accuracy_memory, accuracy_throughput  # noqa: E402


def main() -> None:
    print("=" * 30, "MEMORY", "=" * 30)
    accuracy_memory.main()
    print()
    print("=" * 30, "THROUGHPUT", "=" * 30)
    accuracy_throughput.main()


if __name__ == "__main__":
    main()
