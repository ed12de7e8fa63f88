"""The Triton passes of a rule with per-tensor values: whole-tensor norms and 0-d state.

LARS, LAMB and NovoGrad compute per tensor: a norm, a trust ratio, a 0-d second
moment. :class:`NormSource` renders such a rule as several functions, launched
in turn on the same stream (:func:`._triton_source.launch_order`), staged by
level as :mod:`._native_source` stages its C. For each level of norms,
``adaptim_squares_<level>`` writes each block's sums of squares (in double) to
its own row of a buffer, and ``adaptim_tensors_<level>``, one program per
tensor, adds its tensor's rows in block order (so the norm does not depend on
scheduling; no atomics), takes the root, computes the level's per-tensor values
into a per-tensor buffer and, at the last level, writes the 0-d state (read
before written, by the one program of its tensor). ``adaptim_step`` then reads
the values it needs and recomputes the element-wise ones rather than storing
parameter-sized temporaries. A per-tensor pass rather than each block adding
its tensor's sums itself, which is quadratic in a tensor's blocks (16k programs
adding 16k sums each for a 16M-element tensor). No host synchronisation: the
buffers stay on the device, allocated once per partition (:mod:`._triton`).
"""

from __future__ import annotations

import torch

from adaptim.torch._trace import Ref, Structure
from adaptim.torch._triton_source import _MASKS, ROWS, _Source


class NormSource(_Source):
    """Renders a rule with per-tensor values: its passes, then ``adaptim_step``."""

    def __init__(self, structure: Structure, dtype: torch.dtype) -> None:
        super().__init__(structure, dtype)
        # Levels (as the native loop's): a norm is one level above its operand; what
        # a level's norms need is computed before them.
        self.stage: dict[int, int] = {}
        for index, (op, args) in enumerate(structure.ops):
            level = max((self.stage_of(a) for a in args), default=0)
            self.stage[index] = level + 1 if op == "norm" else level
        self.top = max(self.stage.values(), default=0)
        self.norms = [i for i, (op, _) in enumerate(structure.ops) if op == "norm"]
        self.norm_slot = {node: k for k, node in enumerate(self.norms)}
        element_reads = {
            a for i, (_, args) in enumerate(structure.ops) if i not in self.per_nodes for a in args
        }
        #: The per-tensor inputs element-wise operations read: copied to the per-tensor
        #: buffer before anything writes them.
        self.per_inputs = [
            ("input", i)
            for i, name in enumerate(structure.inputs)
            if name in structure.per_tensor_inputs and ("input", i) in element_reads
        ]
        # (the per-tensor values a later pass reads: an element-wise operation, or one of a
        # later level; and the per-tensor state written)
        handed = {
            a
            for i, (_, args) in enumerate(structure.ops)
            for a in args
            if a[0] == "node"
            and a[1] in self.per_nodes
            and (i not in self.per_nodes or self.stage[i] != self.stage[a[1]])
        }
        handed |= {
            ref for _, ref in structure.outputs if ref[0] == "node" and ref[1] in self.per_nodes
        }
        per_refs = [("node", i) for i in sorted(self.per_nodes) if ("node", i) in handed]
        per_refs += self.per_inputs
        self.per_slot = {ref: k for k, ref in enumerate(per_refs)}

    def stage_of(self, ref: Ref) -> int:
        return self.stage[ref[1]] if ref[0] == "node" else 0

    def ancestors(self, roots: list[int]) -> list[int]:
        """The element-wise nodes the roots need, in recording order."""
        needed: set[int] = set()
        stack = list(roots)
        while stack:
            for arg in self.structure.ops[stack.pop()][1]:
                if arg[0] == "node" and arg[1] not in self.per_nodes and arg[1] not in needed:
                    needed.add(arg[1])
                    stack.append(arg[1])
        return sorted(needed)

    def squares(self, level: int) -> list[str]:
        """``adaptim_squares_<level>``: each block's sums of squares for the level's norms, in
        double, into ``partial[b * NN + norm]`` (a block's own row: no atomics)."""
        norms = [i for i in self.norms if self.stage[i] == level]
        operands = [self.structure.ops[i][1][0] for i in norms]
        lines = self.block(f"adaptim_squares_{level}", self.ancestors(norms), set(operands), set())
        for norm, operand in zip(norms, operands, strict=True):
            lines += [
                f"    x{norm} = tl.where(inside, {self.value(operand)}.to(tl.float64), 0.0)",
                f"    tl.store(partial + b * {len(self.norms)} + {self.norm_slot[norm]},"
                f" tl.reduce(x{norm} * x{norm}, 0, _add))",
            ]
        return lines

    def tensors(self, level: int, first: bool) -> list[str]:
        """``adaptim_tensors_<level>``, one program per tensor: the level's norms (its blocks'
        sums, added in block order), the level's per-tensor values into ``per``; the first
        such pass copies the per-tensor inputs the element-wise passes read, the last one
        writes the per-tensor state (one program per tensor: read before written)."""
        structure = self.structure
        norms = [i for i in self.norms if self.stage[i] == level]
        nodes = [i for i in sorted(self.per_nodes) if self.stage[i] == level]
        last = level == self.top
        outputs = [
            (name, ref) for name, ref in structure.outputs if name in structure.per_tensor_inputs
        ]
        refs = {a for i in nodes for a in structure.ops[i][1]}
        refs |= {ref for _, ref in outputs} if last else set()
        refs |= set(self.per_inputs) if first else set()
        lines = [*self.head(f"adaptim_tensors_{level}"), "    t = tl.program_id(0).to(tl.int64)"]
        if norms:
            lines += ["    low = tl.load(spans + 2 * t)", "    high = tl.load(spans + 2 * t + 1)"]
            lines += [f"    sum{i} = tl.full([{ROWS}], 0.0, tl.float64)" for i in norms]
            # (``while``: the interpreter's ``range`` takes no loaded bounds)
            lines += [
                "    j = low",
                "    while j < high:",
                f"        rows = j + tl.arange(0, {ROWS})",
            ]
            lines += [
                f"        sum{i} += tl.load(partial + rows * {len(self.norms)} + "
                f"{self.norm_slot[i]}, mask=rows < high, other=0.0)"
                for i in norms
            ]
            lines.append(f"        j += {ROWS}")
        for role, name in enumerate(structure.inputs):
            read = ("input", role) in refs and name in structure.per_tensor_inputs
            if read or (last and any(n == name for n, _ in outputs)):
                lines.append(self.pointer(role))
            if read:
                lines.append(f"    pin{role} = tl.load({name})")
        lines += [
            f"    v{ref[1]} = tl.load({self.per_value(ref)})"
            for ref in sorted(refs)
            if ref[0] == "node" and ref[1] in self.per_nodes and ref[1] not in nodes
        ]
        self.masks = {i for i in nodes if structure.ops[i][0] in _MASKS}
        for index in nodes:
            lines.append(f"    v{index} = {self.node(index)}")
            if ("node", index) in self.per_slot:
                lines.append(
                    f"    tl.store({self.per_value(('node', index))}, {self.value(('node', index))})"
                )
        if first:
            lines += [
                f"    tl.store({self.per_value(ref)}, {self.text(ref)})" for ref in self.per_inputs
            ]
        if last:
            lines += [f"    tl.store({name}, {self.value(ref)})" for name, ref in outputs]
        return lines

    def levels(self) -> list[int]:
        """The levels that have a per-tensor pass (``adaptim_tensors_<level>``)."""
        if not self.tensorwise:
            return []
        return sorted({self.stage[i] for i in self.per_nodes} | {self.top})

    def launch_order(self) -> list[tuple[str, str]]:
        """The functions of a step, in launch order, each with its grid: ``blocks`` (one
        program per block) or ``tensors`` (one per tensor)."""
        tensors = self.levels()
        order = []
        for level in range(self.top + 1):
            if level > 0:
                order.append((f"adaptim_squares_{level}", "blocks"))
            if level in tensors:
                order.append((f"adaptim_tensors_{level}", "tensors"))
        return [*order, ("adaptim_step", "blocks")]

    def passes(self) -> list[str]:
        """Each level's squares (from level 1) and per-tensor pass, in launch order."""
        lines: list[str] = []
        tensors = self.levels()
        for level in range(self.top + 1):
            if level > 0:
                lines += self.squares(level)
            if level in tensors:
                lines += self.tensors(level, level == tensors[0])
        return lines
