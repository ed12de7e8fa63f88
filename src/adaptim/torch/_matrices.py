"""Muon's matrix products on the torch front-end, bit for bit as ``torch.optim.Muon``'s.

A Muon step is matrix products (:func:`adaptim.algorithms.muon.newton_schulz`,
15 of them per matrix at the default five steps); everything else is a few
element-wise passes. Three things make them cheaper without changing a bit:

* **Half of each symmetric product** (one thread, matrices of 512 rows or
  more). :math:`A = XX^\top` and :math:`bA + cA^2` are symmetric, and oneDNN's
  bfloat16 kernels compute entry :math:`(i, j)` from the same products in the
  same order as :math:`(j, i)`, so the full product is symmetric to the bit.
  :func:`symmetric_addmm` computes the upper triangle in row panels (panel
  :math:`p`: rows :math:`r_p..r_{p+1}` by columns :math:`r_p..m`) and mirrors
  it: :math:`(P+1)/2P` of the multiply-adds with :math:`P` panels. An entry's
  products and their order do not depend on the panel it falls in; whether
  that holds for this machine's kernels, shapes, layouts and thread count is
  *checked once* per case on random data (:func:`_panels_agree`), and a case
  where it does not keeps the plain product. Only bfloat16 on the CPU (torch's
  Muon precision) takes panels.
* **One iteration for same-shaped matrices** of a param group
  (:func:`step_matrices`) where panels do not apply: ``bmm``/``baddbmm`` over
  their stack instead of ``mm``/``addmm`` per matrix, so six 512×512 matrices
  open one parallel region per product instead of six (equal to the
  per-matrix products, to the bit, measured on 1 and 2 threads, provided each
  matrix keeps its layout: a tall matrix's start is a transposed view).
* **A workspace kept between steps** (:class:`Workspace`): the products, the
  momentum's multiply-adds, the bfloat16 starts (written straight into their
  slot of the stack) and the update converted to the parameter's dtype go
  into the same buffers every step instead of fresh pages; the momentum and
  the parameter are updated in place, as torch's ``lerp_``, ``mul_`` and
  ``add_`` do. A fresh parameter-sized tensor costs its page faults, about as
  much as the element-wise pass itself.

The momentum and the normalisation are the rule's own functions, run per
matrix on the workspace's ops; the iteration is the rule's
:func:`~adaptim.algorithms.muon.iterate`.
"""

from __future__ import annotations

import dataclasses
import functools
import itertools
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch

from adaptim.algorithms import muon

if TYPE_CHECKING:
    from adaptim.torch._base import Optimizer

#: Rows of a panel: below about 256 rows a bfloat16 product loses more to the
#: smaller calls than the skipped triangle saves (measured at 512 and 1024 rows).
PANEL_ROWS = 256


def addmm(
    c: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: float, alpha: float
) -> torch.Tensor:
    """``beta·c + alpha·(a @ b)``: ``torch.addmm``, or ``torch.baddbmm`` for a stack."""
    if a.ndim == 2:
        return torch.addmm(c, a, b, beta=beta, alpha=alpha)
    return torch.baddbmm(c, a, b, beta=beta, alpha=alpha)


def plain_symmetric_addmm(
    c: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, beta: float, alpha: float
) -> torch.Tensor:
    """The whole product, as torch's Muon computes it (``a @ b`` when ``c`` is ``None``)."""
    return a @ b if c is None else addmm(c, a, b, beta, alpha)


def symmetric_addmm(
    c: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, beta: float, alpha: float
) -> torch.Tensor:
    """``plain_symmetric_addmm``, computing the upper triangle only where that gives the same bits."""
    cuts = _panel_cuts(a, b, c)
    if cuts is None or not _panels_agree(
        tuple(a.shape), a.stride(), c is None, beta, alpha, torch.get_num_threads()
    ):
        return plain_symmetric_addmm(c, a, b, beta, alpha)
    return _by_panels(c, a, b, beta, alpha, cuts)


def _panel_cuts(a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None) -> tuple[int, ...] | None:
    """Where the row panels start and end, or ``None`` for the plain product.

    Two patterns only, those of :func:`muon.iterate`: the Gram matrix ``a @ a.mT``
    and the square ``beta·g + alpha·g @ g`` of a symmetric ``g`` (``a is b is c``).
    """
    if a.device.type != "cpu" or a.dtype != torch.bfloat16 or a.ndim != 2:
        return None
    if c is None:
        if b.shape != a.T.shape or b.stride() != a.T.stride() or b.data_ptr() != a.data_ptr():
            return None
    elif not (a is b and b is c and a.shape[-1] == a.shape[-2] and a.is_contiguous()):
        return None
    rows = a.shape[0]
    panels = panel_count(rows)
    if panels < 2:
        return None
    return tuple(round(rows * i / panels) for i in range(panels + 1))


def panel_count(rows: int) -> int:
    """Row panels for a symmetric product of ``rows`` rows (below 2: the plain product).

    One thread only: on more, each panel is one more parallel region, and on a
    loaded machine (measured: 2 threads, 1024x4096) those cost more than the
    triangle saves; same-shaped matrices then share a stack instead. Never where
    oneDNN runs bfloat16 products on AMX tiles (:func:`onednn_amx`).
    """
    if torch.get_num_threads() != 1 or onednn_amx():
        return 0
    return rows // PANEL_ROWS


@functools.cache
def onednn_amx() -> bool:
    """Whether this CPU has AMX tiles, on which oneDNN runs bfloat16 products.

    There an entry's sum depends on the rows given: on an Intel Xeon (Emerald
    Rapids), 1024x1024 Muon steps by panels differed from torch.optim.Muon in
    40-70% of the elements, although :func:`_panels_agree`'s check on random
    data of the same case agreed; and 512-row panels were not faster than one
    stacked product (6 matrices of 512x512, one thread: 43.6 ms against 36.2 ms,
    torch 35.5 ms). So no panels there.
    """
    check = getattr(torch.cpu, "_is_amx_tile_supported", None)
    return bool(check is not None and check())


def _by_panels(
    c: torch.Tensor | None,
    a: torch.Tensor,
    b: torch.Tensor,
    beta: float,
    alpha: float,
    cuts: tuple[int, ...],
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    rows = a.shape[0]
    if out is None:
        out = a.new_empty((rows, rows))
    for start, end in itertools.pairwise(cuts):
        # (mm and addmm take these strided blocks as they are: no copies)
        block, left, right = out[start:end, start:], a[start:end], b[:, start:]
        if c is None:
            torch.mm(left, right, out=block)
        else:
            torch.addmm(c[start:end, start:], left, right, beta=beta, alpha=alpha, out=block)
        if end < rows:  # the lower triangle of these columns: the mirror of the panel's right part
            out[end:, start:end].copy_(out[start:end, end:].T)
    return out


@functools.lru_cache(maxsize=256)
def _panels_agree(
    shape: tuple[int, ...],
    stride: tuple[int, ...],
    gram: bool,
    beta: float,
    alpha: float,
    threads: int,
) -> bool:
    """Whether panels give the plain product's bits for this case on this machine.

    A property of the kernels (which products, in which order, each entry
    sums), not of the values: one comparison on random data of the same shape
    and layout settles it for the process.
    """
    generator = torch.Generator().manual_seed(0)
    values = torch.randn(shape, generator=generator).to(torch.bfloat16)
    a = torch.empty_strided(shape, stride, dtype=torch.bfloat16).copy_(values)
    a = a / a.float().norm().to(torch.bfloat16)  # the iteration's scale: entries below 1
    if gram:
        b, c = a.T, None
    else:
        a = a @ a.T  # a symmetric, contiguous square
        b = c = a
    cuts = _panel_cuts(a, b, c)
    if cuts is None:
        return False
    plain = plain_symmetric_addmm(c, a, b, beta, alpha)
    return torch.equal(plain, _by_panels(c, a, b, beta, alpha, cuts))


def batchable(hp: Mapping[str, Any]) -> bool:
    """Whether a group's matrices take :func:`step_matrices`: torch's precision, no AdamW fallback."""
    return hp["ns_precision"] == "bfloat16" and hp["adamw_for"] is None


class Workspace:
    """The iteration's matrices, kept between steps: ``xp.addmm`` and
    ``xp.symmetric_addmm`` write into buffers of this object instead of fresh ones.

    A step of a few large matrices otherwise touches fresh pages for every
    product (15 per matrix), which costs more than the skipped triangle saves.
    Per shape: two iterates (written in turn) and the two Gram-sized products.
    """

    def __init__(self) -> None:
        self.buffers: dict[tuple[Any, ...], torch.Tensor] = {}

    def _take(
        self,
        role: str,
        like: torch.Tensor,
        shape: tuple[int, ...],
        dtype: torch.dtype | None = None,
    ) -> torch.Tensor:
        key = (role, shape, dtype or like.dtype, like.device)
        buffer = self.buffers.get(key)
        if buffer is None:
            buffer = self.buffers[key] = like.new_empty(shape, dtype=dtype)
        return buffer

    def _free(self, role: str, like: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        """A buffer of ``like``'s shape that none of ``inputs`` lives in (of three in turn)."""
        taken = {t.data_ptr() for t in inputs}
        for index in range(3):
            out = self._take(f"{role}{index}", like, tuple(like.shape))
            if out.data_ptr() not in taken:
                return out
        raise AssertionError("three inputs all in the workspace")  # (the ops take two)

    # The momentum's multiply-adds, written into the workspace: same kernels,
    # same bits, but no fresh parameter-sized tensor (and its page faults) per call.
    def lerp(
        self,
        start: torch.Tensor,
        end: torch.Tensor,
        weight: float,
        momentum: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``torch.lerp``; the ``momentum`` buffer's own update in place (torch's ``lerp_``)."""
        out = momentum if start is momentum else self._free("m", start, start, end)
        return torch.lerp(start, end, weight, out=out)

    def axpy(self, a: torch.Tensor, b: torch.Tensor, alpha: float) -> torch.Tensor:
        return torch.add(a, b, alpha=alpha, out=self._free("m", a, a, b))

    def addmm(
        self, c: torch.Tensor, a: torch.Tensor, b: torch.Tensor, beta: float, alpha: float
    ) -> torch.Tensor:
        shape = (*a.shape[:-1], b.shape[-1])
        out = self._take("x0", a, shape)
        if out.data_ptr() in (c.data_ptr(), a.data_ptr(), b.data_ptr()):
            out = self._take("x1", a, shape)
        if a.ndim == 2:
            return torch.addmm(c, a, b, beta=beta, alpha=alpha, out=out)
        return torch.baddbmm(c, a, b, beta=beta, alpha=alpha, out=out)

    def symmetric_addmm(
        self, c: torch.Tensor | None, a: torch.Tensor, b: torch.Tensor, beta: float, alpha: float
    ) -> torch.Tensor:
        out = self._take("gram" if c is None else "square", a, (*a.shape[:-1], a.shape[-2]))
        cuts = _panel_cuts(a, b, c)
        if cuts is not None and _panels_agree(
            tuple(a.shape), a.stride(), c is None, beta, alpha, torch.get_num_threads()
        ):
            return _by_panels(c, a, b, beta, alpha, cuts, out)
        if c is None:
            return torch.matmul(a, b, out=out)
        return (torch.addmm if a.ndim == 2 else torch.baddbmm)(
            c, a, b, beta=beta, alpha=alpha, out=out
        )


#: Matrices stacked into one iteration at most (the stack's products are its size).
STACK_NUMEL = 1 << 22
#: Only matrices with both sides at least this long share a stack: torch multiplies
#: smaller ones with loops of its own, whose sums differ between ``mm`` and ``bmm``
#: on some values (measured on 12x21; 32x40 to 512x512 agreed in every trial).
STACK_MIN_SIDE = 64


def step_matrices(
    optimizer: Optimizer,
    params: list[torch.Tensor],
    group: Mapping[str, Any],
    hp: Mapping[str, Any],
    xp: Any,
    workspace: Workspace,
) -> list[torch.Tensor]:
    """One Muon step of a group's dense CPU matrices; return the parameters it leaves.

    The rule's own pieces (:func:`muon.momentum_direction`, :func:`muon.normalised`,
    :func:`muon.iterate`) in :func:`muon.muon_update`'s order, with every
    intermediate written into ``workspace`` and the step
    (:func:`muon.descend`) taken in place, as torch's ``mul_`` and ``add_``.
    Matrices large enough for panels iterate one at a time; smaller
    same-shaped ones iterate as one stack (up to :data:`STACK_NUMEL`
    elements), with one ``bmm`` per product. A matrix whose gradient or
    momentum is not contiguous (torch's start then has their layout, which
    the products' sums depend on) is left to the per-tensor rule.
    """
    rest: list[torch.Tensor] = []
    by_shape: dict[tuple[int, ...], list[tuple[torch.Tensor, torch.Tensor]]] = {}
    for p in params:
        grad = p.grad
        assert grad is not None
        plain = p.device.type == "cpu" and not grad.is_sparse and grad.dtype == p.dtype
        if plain and p.ndim == 2 and not p.is_complex() and grad.is_contiguous():
            stored = optimizer._init_state(p, group)["momentum_buffer"]
            if stored.is_contiguous():
                by_shape.setdefault(tuple(p.shape), []).append((p, stored))
                continue
        rest.append(p)
    coefficients = tuple(hp["ns_coefficients"])
    threads = torch.get_num_threads()
    for shape, members in by_shape.items():
        wide = shape[0] <= shape[1]  # the iteration's start: the matrix, or its transpose
        start = shape if wide else shape[::-1]
        alone = len(members) == 1 or panel_count(start[0]) >= 2 or start[0] < STACK_MIN_SIDE
        size = 1 if alone else max(1, STACK_NUMEL // (shape[0] * shape[1]))
        for first in range(0, len(members), size):
            chunk = members[first : first + size]
            stacked = len(chunk) > 1 and _stack_agrees(
                start, wide, len(chunk), coefficients, threads
            )
            for part in [chunk] if stacked else [[member] for member in chunk]:
                _step_chunk(xp, hp, workspace, part)
    return rest


def _step_chunk(
    xp: Any,
    hp: Mapping[str, Any],
    workspace: Workspace,
    members: list[tuple[torch.Tensor, torch.Tensor]],
) -> None:
    """Momentum, start and step of ``members`` (same-shaped), iterating on one stack of their
    starts (a single matrix: on its start alone)."""
    shape = tuple(members[0][0].shape)
    # each start is written into its slot of the stack: a tall matrix's is the
    # transposed view of its slot, as torch's is of its bfloat16 copy
    stack = workspace._take("start", members[0][0], (len(members), *shape), torch.bfloat16)
    for (p, stored), slot in zip(members, stack.unbind(0), strict=True):
        lerp = functools.partial(workspace.lerp, momentum=stored)
        pointwise = dataclasses.replace(xp, lerp=lerp, axpy=workspace.axpy)
        buffer, direction = muon.momentum_direction(
            pointwise, stored, p.grad, hp["momentum"], hp["nesterov"], hp["momentum_average"]
        )
        if buffer is not stored:
            stored.copy_(buffer)
        into_slot = dataclasses.replace(xp, to_bfloat16=slot.copy_)
        muon.normalised(into_slot, direction, hp["eps"], hp["ns_precision"], hp["eps_added"])
    wide = shape[0] <= shape[1]
    x = stack if wide else stack.mT
    products = dataclasses.replace(
        xp, addmm=workspace.addmm, symmetric_addmm=workspace.symmetric_addmm
    )
    result = muon.iterate(
        products, x if len(members) > 1 else x[0], hp["ns_coefficients"], hp["ns_steps"]
    )
    results = [result] if result.ndim == 2 else list(result.unbind(0))
    lr, weight_decay = hp["lr"], hp["weight_decay"]
    for (p, _), orthogonal in zip(members, results, strict=True):
        rate = muon.adjusted_lr(lr, hp["adjust_lr_fn"], shape, hp["rms_rate"])
        # muon.descend in place: (1 - lr·wd)·p, then + (-rate)·O, each rounded as there;
        # O in the parameter's dtype first (exact), into the workspace, where add_
        # would convert it into a fresh tensor
        update = workspace._take("update", p, shape).copy_(orthogonal if wide else orthogonal.T)
        p.mul_(1 - lr * weight_decay).add_(update, alpha=-rate)


def _stacked(starts: list[torch.Tensor], contiguous: bool) -> torch.Tensor:
    """The starts as one stack, each matrix keeping its layout (a tall one's is a transposed view)."""
    stack = torch.stack([x if contiguous else x.mT for x in starts])
    return stack if contiguous else stack.mT


@functools.lru_cache(maxsize=256)
def _stack_agrees(
    shape: tuple[int, ...],
    contiguous: bool,
    count: int,
    coefficients: tuple[float, float, float],
    threads: int,
) -> bool:
    """Whether one iteration on a stack gives each matrix's bits, for this case on this machine.

    torch multiplies small matrices (a few hundred multiply-adds) in a loop of
    its own and larger ones with oneDNN, alike for ``mm`` and ``bmm`` or not:
    one comparison on random data settles it for the process.
    """
    generator = torch.Generator().manual_seed(0)
    starts = []
    for _ in range(count):
        values = torch.randn(shape if contiguous else shape[::-1], generator=generator)
        x = values.to(torch.bfloat16)
        x = x / x.float().norm().to(torch.bfloat16)
        starts.append(x if contiguous else x.T)
    from adaptim.torch._base import TORCH_OPS  # (the module imports this one)

    alone = [muon.iterate(TORCH_OPS, x, coefficients, 1) for x in starts]
    together = muon.iterate(TORCH_OPS, _stacked(starts, contiguous), coefficients, 1)
    return all(map(torch.equal, alone, together.unbind(0)))
