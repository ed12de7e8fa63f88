"""Worst relative error of adaptim against torch.optim, per algorithm and combination of options.

    .venv/bin/python benchmarks/parity_table.py [--seeds N] [--json out.json]

Every row is one algorithm with one combination of its options switched on,
as in ``tests/test_torch_parity.py``, whose machinery (``tests/_parity.py``)
this script shares: for each of ``N`` seeds it draws a case (hyperparameters,
parameter layouts, gradient scale) and runs :data:`STEPS` steps in float64,
float32 and complex128. Each cell is the worst relative error
``max|a - b| / max(max|b|, tiny)`` over the seeds, for the parameters and for
the state tensors. Cells above the test tolerance are in bold, and the exit
status is 1 when there is any such cell or a structural difference (state
keys, dtypes, layouts, ``step``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from _parity import (
    SPECS,
    STEPS,
    TOLERANCE,
    RandomSource,
    Spec,
    combination_label,
    draw_case,
    run,
)

DTYPES = (torch.float64, torch.float32, torch.complex128)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


@dataclass
class Row:
    algorithm: str
    options: str
    #: Worst error per dtype name, for the parameters and for the state tensors.
    param: dict[str, float] = field(default_factory=dict)
    state: dict[str, float] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def failed(self) -> bool:
        return bool(self.problems) or any(
            error > TOLERANCE[dtype]
            for dtype in DTYPES
            for error in (self.param[dtype_name(dtype)], self.state[dtype_name(dtype)])
        )


def measure(spec: Spec, enabled: tuple[str, ...], seeds: int) -> Row:
    row = Row(spec.name, combination_label(enabled))
    for seed in range(seeds):
        case = draw_case(spec, [enabled], RandomSource(f"{spec.name} {row.options} {seed}"))
        for dtype in DTYPES:
            result = run(case, dtype)
            key = dtype_name(dtype)
            row.param[key] = max(row.param.get(key, 0.0), result.worst_param)
            row.state[key] = max(row.state.get(key, 0.0), result.worst_state)
            row.problems += [f"seed {seed}, {dtype}: {problem}" for problem in result.problems]
    return row


def cell(error: float, dtype: torch.dtype) -> str:
    text = "0" if error == 0 else f"{error:.1e}"
    return f"**{text}**" if error > TOLERANCE[dtype] else text


def table(rows: list[Row]) -> str:
    header = ["algorithm", "options"]
    header += [f"{dtype_name(dtype)} {kind}" for dtype in DTYPES for kind in ("param", "state")]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        cells = [row.algorithm, row.options]
        for dtype in DTYPES:
            key = dtype_name(dtype)
            cells += [cell(row.param[key], dtype), cell(row.state[key], dtype)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="random draws per row (default 3)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(1)

    start = time.perf_counter()
    rows = [measure(spec, enabled, args.seeds) for spec in SPECS for enabled in spec.combinations()]
    elapsed = time.perf_counter() - start

    print(table(rows))
    tolerances = ", ".join(f"{dtype_name(dtype)} {TOLERANCE[dtype]:g}" for dtype in DTYPES)
    print(
        f"\n{len(rows)} rows, {args.seeds} draws each, {STEPS} steps per run, "
        f"{elapsed:.0f} s. Bold: above the test tolerance ({tolerances})."
    )
    for row in rows:
        for problem in row.problems:
            print(f"{row.algorithm} {row.options}: {problem}")
    if args.json:
        payload = {
            "steps": STEPS,
            "seeds": args.seeds,
            "tolerance": {dtype_name(dtype): TOLERANCE[dtype] for dtype in DTYPES},
            "rows": [asdict(row) for row in rows],
        }
        args.json.write_text(json.dumps(payload, indent=2) + "\n")
    return 1 if any(row.failed() for row in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
