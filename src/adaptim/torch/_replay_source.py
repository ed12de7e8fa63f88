"""The source of a replay plan: one ``torch._foreach_*`` line per recorded operation.

:class:`_Emitter` walks a :class:`~adaptim.torch._trace.Structure` in order
and writes the body of the Python function :mod:`._replay` compiles: it tracks
which buffer holds each value, works in place where liveness allows, falls
back to one call per tensor for host, reduced and per-tensor values, and
hands each fusable run of element-wise operations to :mod:`._fuse` (or
:mod:`._fuse_axes`) behind a run-time check, with the multi-tensor lines as
the other branch.

Kept apart from :mod:`._replay`, which compiles that source once per
structure, caches the plan and runs it over chunks of the tensor lists: this
module only writes text.
"""

from __future__ import annotations

import itertools
from typing import Any

from adaptim.torch import _fuse, _fuse_axes
from adaptim.torch._replay_ops import COMMUTATIVE, FOREACH, HOST, IN_PLACE, PER_TENSOR
from adaptim.torch._trace import Ref, Structure


class _Emitter:
    """Turns a structure into source, tracking which buffer holds each value."""

    def __init__(self, structure: Structure, rounded: bool = False) -> None:
        self.structure = structure
        #: Per-axis loops inline the correctly rounded ``sqrt`` (see :class:`._fuse_axes.FusedAxesRun`).
        self.rounded = rounded
        self.lines: list[str] = []
        count = len(structure.ops)
        self.end = count
        self.last_use: dict[Ref, int] = {}
        for index, (_, args) in enumerate(structure.ops):
            for arg in args:
                if arg[0] in ("input", "node"):
                    self.last_use[arg] = index
        for _, ref in (*structure.outputs, *structure.created):
            self.last_use[ref] = self.end
        self.kinds = structure.kinds()
        self.written = {name for name, _ in structure.outputs}
        self.finals: dict[Ref, list[str]] = {}
        for name, ref in structure.outputs:
            self.finals.setdefault(ref, []).append(name)
        self.created_refs = {ref for _, ref in structure.created}
        #: value -> the buffer (an input name or a temporary) that holds it
        self.storage: dict[Ref, str] = {
            ("input", i): name for i, name in enumerate(structure.inputs)
        }
        #: buffer -> the value it holds now
        self.occupant: dict[str, Ref] = {name: ref for ref, name in self.storage.items()}
        self.temps = itertools.count()
        #: Functions of ``per_tensor`` operations and fused runs, by their name in the generated code.
        self.functions: dict[str, Any] = {}

    def kind(self, ref: Ref) -> str:
        return self.structure.kind_of(ref, self.kinds)

    def text(self, ref: Ref) -> str:
        if ref[0] in ("input", "node"):
            return self.storage[ref]
        if ref[0] == "slot":
            return f"s[{ref[1]}]"
        return repr(ref[1])

    def writable(self, buffer: str) -> bool:
        return (buffer.startswith("t") and buffer[1:].isdigit()) or buffer in self.written

    def may_take(self, buffer: str, node: Ref, index: int) -> bool:
        """Whether ``node`` (computed at ``index``) may be written into ``buffer`` now."""
        if not self.writable(buffer):
            return False
        occupant = self.occupant.get(buffer)
        if occupant is not None and self.last_use.get(occupant, -1) > index:
            return False
        if buffer in self.structure.inputs:
            # A buffer of the rule holds its own final value or intermediates
            # nobody needs at the end; never another buffer's result.
            others = [n for n in self.finals.get(node, []) if n != buffer]
            if others or node in self.created_refs:
                return False
        return True

    def place(self, node: Ref, buffer: str) -> None:
        self.storage[node] = buffer
        self.occupant[buffer] = node

    def new_temp(self, node: Ref) -> str:
        name = f"t{next(self.temps)}"
        self.place(node, name)
        return name

    def emit(self) -> str:
        runs = {run.start: run for run in _fuse_axes.find_runs(self.structure, self.rounded)}
        index = 0
        while index < len(self.structure.ops):
            run = runs.get(index)
            if run is not None:
                self.emit_run(run)
                index = run.stop
                continue
            self.emit_op(index, *self.structure.ops[index])
            index += 1
        self.emit_outputs()
        return "\n".join(self.lines)

    def emit_run(self, run: _fuse.Run) -> None:
        """A fused native loop (:mod:`._fuse`) where a chunk allows it, else the multi-tensor lines.

        Both branches leave every value the rest of the plan reads in the same buffer.
        """
        ops = self.structure.ops
        for index in run.hoisted:
            self.emit_op(index, *ops[index])
        before = dict(self.storage)
        existing = set(self.occupant)
        lines, self.lines = self.lines, []
        for index in run.fused:
            self.emit_op(index, *ops[index])
        branch, self.lines = self.lines, lines
        live = [i for i in run.fused if self.last_use.get(("node", i), -1) >= run.stop]
        fused: _fuse.FusedRun
        if isinstance(run, _fuse_axes.AxesRun):  # (per-axis operands: vectors passed last)
            operands = _fuse_axes.operands(self.structure, run, live)
            fused = _fuse_axes.FusedAxesRun(self.structure, run, operands, self.rounded)
        else:
            operands = _fuse.operands(self.structure, run, live)
            fused = _fuse.FusedRun(self.structure, run, operands)
        name = f"u{len(self.functions)}"
        self.functions[name] = fused
        param = self.structure.inputs[0]
        vectors = [before[r] for r in operands.vectors]
        for node in fused.maxima:  # over the per-axis vector they replace (see _fuse_axes)
            ref: Ref = ("node", node)
            target = self.free_final_buffer(ref, run.stop - 1)
            if target in vectors and self.storage[ref] != target:
                branch.append(f"    torch._foreach_copy_({target}, {self.storage[ref]})")
                self.place(ref, target)
        outputs = [self.storage[("node", i)] for i in live]
        fresh = [b for b in outputs if b not in existing]
        checked = [before[r] for r in operands.elements] + [
            b for i, b in zip(live, outputs, strict=True) if b in existing and i not in fused.maxima
        ]

        def group(names: list[str]) -> str:
            return f"({''.join(n + ', ' for n in names)})"

        extra = f", {group(vectors)}" if vectors else ""
        self.lines.append(
            f"    if {name}.usable({param}, {group(checked)}, "
            f"{group([before[r] for r in operands.tensors])}{extra}):"
        )
        for node, buffer in zip(live, outputs, strict=True):
            if buffer in fresh:
                self.lines.append(f"        {buffer} = {fused.allocation(node, param)}")
        self.lines.append(
            f"        {name}({param}, {group([before[r] for r in operands.elements])}, "
            f"{group([before[r] for r in operands.tensors])}, "
            f"{group([before[r] for r in operands.hosts])}, {group(outputs)}, s{extra})"
        )
        self.lines.append("    else:")
        self.lines.extend("    " + line for line in branch)

    def emit_op(self, index: int, op: str, args: tuple[Ref, ...]) -> None:
        node: Ref = ("node", index)
        kind = self.kinds[index]
        if kind == "host":
            self.emit_per_tensor(node, op, args, HOST)
            return
        if op in COMMUTATIVE and not _is_array(args[0]) and _is_array(args[1]):
            args = (args[1], args[0])
        if op in ("sub", "div") and args[0][0] == "slot" and self.kind(args[1]) == kind:
            self.emit_reversed(index, op, args)  # (unary: any shapes)
            return
        if (
            op == "clip"
            and kind != "reduced"
            and self.kind(args[0]) == kind
            and all(self.kind(a) in ("host", "scalar") for a in args[1:])
        ):
            self.emit_clip(index, args)
            return
        foreach = FOREACH.get(op)
        if (
            foreach is None
            or kind == "reduced"  # shapes differ between operands: per tensor, broadcasting
            or not _is_array(args[0])
            or any(self.kind(a) != kind for a in args if _is_array(a))
        ):
            self.emit_per_tensor(node, op, args)
            return
        positions = [0, 1] if op in COMMUTATIVE and _is_array(args[1]) else [0]
        for position in positions:
            candidate = args[position]
            buffer = self.storage[candidate]
            if self.last_use.get(candidate) == index and self.may_take(buffer, node, index):
                rest = args[1:] if position == 0 else (args[0], *args[2:])
                self.lines.append(f"    torch._foreach_{foreach}_({buffer}{self.rest(op, rest)})")
                self.place(node, buffer)
                return
        target = self.free_final_buffer(node, index)
        if target is not None and len(args) > 1:  # copy, then work in place: no temporary
            self.lines.append(f"    torch._foreach_copy_({target}, {self.text(args[0])})")
            self.lines.append(f"    torch._foreach_{foreach}_({target}{self.rest(op, args[1:])})")
            self.place(node, target)
            return
        source = self.text(args[0])
        name = self.new_temp(node)
        self.lines.append(
            f"    {name} = torch._foreach_{foreach}({source}{self.rest(op, args[1:])})"
        )

    def operand(self, op: str, ref: Ref) -> str:
        """The text of ``ref`` as an operand of ``op``'s multi-tensor kernel."""
        text = self.text(ref)
        if self.structure.half and op == "mul" and not _is_array(ref):
            # torch._foreach_mul_ rounds a Python scalar to float16/bfloat16 first,
            # where ``x * s`` (the reference path, torch.optim's ``mul_``) keeps it in
            # float32; a 0-d float64 tensor is read as the latter.
            return f"torch.tensor({text}, dtype=torch.float64)"
        return text

    def rest(self, op: str, args: tuple[Ref, ...] | list[Ref]) -> str:
        texts = [self.operand(op, a) for a in args]
        if op == "axpy":
            return f", {texts[0]}, alpha={texts[1]}"
        if op in ("addcmul", "addcdiv"):
            return f", {texts[0]}, {texts[1]}, value={texts[2]}"
        return "".join(f", {t}" for t in texts)

    def emit_reversed(self, index: int, op: str, args: tuple[Ref, ...]) -> None:
        """``s - x`` is ``(-x) + s``, and ``s / x`` is ``reciprocal(x) * s`` (Tensor.__rtruediv__)."""
        node: Ref = ("node", index)
        first, second = ("neg", "add") if op == "sub" else ("reciprocal", "mul")
        operand = args[1]
        buffer = self.storage[operand]
        if self.last_use.get(operand) == index and self.may_take(buffer, node, index):
            self.lines.append(f"    torch._foreach_{first}_({buffer})")
        else:
            buffer = self.new_temp(node)
            self.lines.append(f"    {buffer} = torch._foreach_{first}({self.text(operand)})")
        self.lines.append(
            f"    torch._foreach_{second}_({buffer}, {self.operand(second, args[0])})"
        )
        self.place(node, buffer)

    def free_final_buffer(self, node: Ref, index: int) -> str | None:
        """A buffer this node is the final value of, whose current content nobody reads any more."""
        for buffer in self.finals.get(node, []):
            occupant = self.occupant.get(buffer)
            dead = occupant is None or self.last_use.get(occupant, -1) < index
            if dead and self.may_take(buffer, node, index):
                return buffer
        return None

    def emit_clip(self, index: int, args: tuple[Ref, ...]) -> None:
        """``clip`` as multi-tensor ``clamp_min``/``clamp_max`` (bounds: slots or host lists)."""
        node: Ref = ("node", index)
        operand, low, high = args
        buffer = self.storage[operand]
        bounds = [("clamp_min", low, float("-inf")), ("clamp_max", high, float("inf"))]
        # an infinite constant bound clamps nothing; an infinite slot is checked at run time
        bounds = [b for b in bounds if not (b[1][0] == "const" and b[1][1] == b[2])]
        if self.last_use.get(operand) == index and self.may_take(buffer, node, index):
            self.place(node, buffer)
        else:
            target = self.free_final_buffer(node, index)
            if target is not None:
                self.lines.append(f"    torch._foreach_copy_({target}, {buffer})")
                self.place(node, target)
            else:
                name, bound, _ = bounds.pop(0) if bounds else ("clamp_min", low, None)
                target = self.new_temp(node)
                self.lines.append(
                    f"    {target} = torch._foreach_{name}({buffer}, {self.text(bound)})"
                )
            buffer = target
        for name, bound, skip in bounds:
            guard = f"if {self.text(bound)} != {skip!r}: " if bound[0] == "slot" else ""
            self.lines.append(f"    {guard}torch._foreach_{name}_({buffer}, {self.text(bound)})")

    def emit_per_tensor(
        self, node: Ref, op: str, args: tuple[Ref, ...], table: dict[str, str] = PER_TENSOR
    ) -> None:
        """One call per tensor: in place on a dead first operand of the result's shape, else new."""
        lists = list(dict.fromkeys(a for a in args if _is_array(a)))
        names = [f"x{i}" for i in range(len(lists))]
        by_ref = dict(zip(lists, names, strict=True))
        texts = [by_ref[a] if _is_array(a) else self.text(a) for a in args]
        zipped = ", ".join(self.storage[a] for a in lists)
        loop = (
            f"for {', '.join(names)}{',' if len(names) == 1 else ''} in zip({zipped}, strict=True)"
        )
        index = node[1]
        kind = self.kinds[index]
        first = args[0]
        # (a reduced value may only overwrite the state it becomes: the same shape)
        same_shape = kind in ("element", "tensor") or (
            _is_array(first) and self.storage[first] in self.finals.get(node, [])
        )
        if (
            table is PER_TENSOR
            and op in IN_PLACE
            and same_shape
            and self.kind(first) == kind
            and self.last_use.get(first) == index
            and self.may_take(self.storage[first], node, index)
        ):
            self.lines.append(f"    {loop}: {IN_PLACE[op].format(*texts)}")
            self.place(node, self.storage[first])
            return
        if op == "per_tensor":  # a rule's own per-tensor function: fn(xp, *arrays)
            function = args[0][1]
            name = next((n for n, f in self.functions.items() if f is function), None)
            if name is None:
                name = f"f{len(self.functions)}"
                self.functions[name] = function
            expression = f"{name}(xp, {', '.join(texts[2:])})"
        elif op == "mean_square" and args[1] == ("const", -2) and table is PER_TENSOR:
            # column statistics: one native pass where it may (._column_stats)
            name = self.new_temp(node)
            self.lines.append(f"    {name} = column_mean_squares({zipped}, xp.mean_square)")
            return
        else:
            expression = table[op].format(*texts)
        name = self.new_temp(node)
        self.lines.append(f"    {name} = [{expression} {loop}]")

    def emit_outputs(self) -> None:
        inputs = self.structure.inputs
        sources = {ref for _, ref in self.structure.outputs}
        for ref in sources:  # an old value that must survive the writes below
            if ref[0] == "input" and inputs[ref[1]] in self.written:
                clone = f"t{next(self.temps)}"
                self.lines.append(f"    {clone} = [x.clone() for x in {self.storage[ref]}]")
                self.storage[ref] = clone
        for buffer, ref in self.structure.outputs:
            if self.storage[ref] != buffer:
                self.lines.append(f"    torch._foreach_copy_({buffer}, {self.storage[ref]})")
        results, adopted = [], set()
        for _, ref in self.structure.created:
            buffer = self.storage[ref]
            if buffer in inputs or buffer in adopted:
                results.append(f"[x.clone() for x in {buffer}]")
            else:
                adopted.add(buffer)
                results.append(buffer)
        self.lines.append(f"    return ({''.join(r + ', ' for r in results)})")


def _is_array(ref: Ref) -> bool:
    return ref[0] in ("input", "node")
