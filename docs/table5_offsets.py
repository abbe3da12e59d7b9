"""A fact about the paper's Table 5: in every accuracy pair, MLP-Attn's accuracy equals
2L-ReLU's plus a constant per data set. Read from SPEC.md §9 (the paper's numbers as the
project transcribed them), checked against the package's copy (PAPER_TABLE5).

Run: ``PYTHONPATH=src python docs/table5_offsets.py [path/to/SPEC.md]`` (default
../shared/SPEC.md); writes docs/table5_offsets.json, which docs/reproduction.md quotes.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from malleability.repro.experiments.interventions import PAPER_TABLE5

DATASETS = {"MNIST": "mnist", "Fashion-MNIST": "fashion-mnist", "CIFAR-10": "cifar10"}
OUT = Path(__file__).with_suffix(".json")


def spec_table5(spec: str) -> dict[tuple[str, str, str], tuple[float, ...]]:
    """The eight numbers per (data set, architecture, training) of SPEC §9's Table 5 text."""
    text = " ".join(spec[spec.index("Table 5 test accuracy"):
                         spec.index("These are the paper's claims")].split())
    standard, adversarial = text.split("Adversarially trained:")
    rows = {}
    for kind, part in (("standard", standard), ("adversarially trained", adversarial)):
        relu, attn = part.split("MLP-Attn")
        for model, chunk in (("relu", relu), ("attn", attn)):
            for name, numbers in re.findall(r"(Fashion-MNIST|MNIST|CIFAR-10) ([\d. /,]+)",
                                            chunk):
                values = tuple(float(v) for v in re.findall(r"\d+\.\d", numbers))
                rows[DATASETS[name], model, kind] = values
    return rows


def main() -> None:
    spec_path = Path(sys.argv[1]) if len(sys.argv) > 1 else Path("../shared/SPEC.md")
    table = spec_table5(spec_path.read_text(encoding="utf-8"))
    if table != PAPER_TABLE5:
        raise SystemExit("SPEC.md §9 and PAPER_TABLE5 differ")
    offsets, pairs = {}, 0
    for dataset in DATASETS.values():
        diffs = {round(a - r, 6) for kind in ("standard", "adversarially trained")
                 for a, r in zip(table[dataset, "attn", kind][:7],
                                 table[dataset, "relu", kind][:7], strict=True)}
        pairs += 14
        offsets[dataset] = sorted(diffs)
    holds = all(len(d) == 1 for d in offsets.values())
    OUT.write_text(json.dumps({"accuracy_pairs": pairs, "offsets_by_dataset": offsets,
                               "one_constant_per_dataset": holds}, indent=1) + "\n")
    print(f"{pairs} pairs; MLP-Attn − 2L-ReLU per data set: {offsets}; holds: {holds}")


if __name__ == "__main__":
    main()
