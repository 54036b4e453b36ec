"""Serving a trained RNN one step at a time, with constant memory per step.

A `Stream` holds B rows of the cell's state, one (B, Z) memory, and nothing else: no history, no
cache that grows. `step(x)` reads one input per row and returns the prediction for that position,
exactly what the RNN alone computes at that position of a whole sequence (`cell.readout` of the
memory after reading x_0..x_t). `state()` / `load_state()` round-trip the memory exactly, and
`reset(rows)` starts chosen rows afresh (a new episode, a new document) while the others go on.

    stream = Stream.from_run("runs/text")      # or Stream(cell, batch_size=B)
    logits = stream.step(torch.tensor([65]))   # (B, V): the next-token distribution after "A"
    saved = stream.state()                     # {"memory": (B, Z)}
    stream.reset(torch.tensor([True]))         # row 0 back to the cell's start memory

Legend: B rows (independent streams), Z memory size, V vocabulary.
"""
from __future__ import annotations

import torch

from .models.cells import Cell


class Stream:
    """B independent streams through one trained cell: state in, state out."""

    def __init__(self, cell: Cell, batch_size: int = 1):
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.cell = cell.eval()
        self.batch_size = batch_size
        self.steps = torch.zeros(batch_size, dtype=torch.long)  # inputs read per row since its last reset
        with torch.no_grad():
            self.memory = self._start(batch_size)

    @classmethod
    def from_run(cls, run_dir: str, batch_size: int = 1, device: str = "cpu") -> "Stream":
        """The RNN of a finished run (any method: its cell, as saved)."""
        from .runs import load_run

        return cls(load_run(run_dir, device)[3], batch_size)

    def _start(self, n: int) -> torch.Tensor:
        return self.cell.init_memory(n).detach().clone()

    @torch.no_grad()
    def step(self, x: torch.Tensor) -> torch.Tensor:
        """Read one step per row: token ids x (B,), or real features x (B, F) for a cell that reads them
        -> the prediction at this position (B, output.dim): logits, or a real-valued output's raw
        parameters (`cell.output.params`); the memory moves on."""
        x = torch.as_tensor(x, device=self.memory.device)
        F = self.cell.cfg.features
        if F is not None:
            if x.shape != (self.batch_size, F) or not x.is_floating_point():
                raise ValueError(f"step takes {F} real features per row, a float tensor of shape ({self.batch_size}, {F}); "
                                 f"got {x.dtype} of shape {tuple(x.shape)}")
            self.memory = self.cell.update(self.memory, x.to(self.memory.dtype))
            self.steps += 1
            return self.cell.readout(self.memory)
        if x.shape != (self.batch_size,) or x.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"step takes one token id per row, an integer tensor of shape ({self.batch_size},); "
                             f"got {x.dtype} of shape {tuple(x.shape)}")
        V = self.cell.cfg.vocab_size
        if int(x.min()) < 0 or int(x.max()) >= V:
            raise ValueError(f"token ids must lie in [0, {V - 1}] (the cell's vocabulary), got [{int(x.min())}, {int(x.max())}]")
        self.memory = self.cell.update(self.memory, x.long())
        self.steps += 1
        return self.cell.readout(self.memory)

    @torch.no_grad()
    def predict(self) -> torch.Tensor:
        """The prediction from the current memory without reading anything (B, V)."""
        return self.cell.readout(self.memory)

    def reset(self, rows: torch.Tensor | None = None) -> None:
        """Start rows afresh: `rows` a (B,) bool mask (None: every row); the others keep their memory."""
        if rows is None:
            rows = torch.ones(self.batch_size, dtype=torch.bool)
        rows = torch.as_tensor(rows)
        if rows.shape != (self.batch_size,) or rows.dtype != torch.bool:
            raise ValueError(f"reset takes a bool mask of shape ({self.batch_size},), got {rows.dtype} of shape {tuple(rows.shape)}")
        with torch.no_grad():
            keep = (~rows).to(self.memory.device).unsqueeze(1)
            self.memory = torch.where(keep, self.memory, self._start(self.batch_size))
        self.steps = torch.where(rows.cpu(), torch.zeros_like(self.steps), self.steps)

    def state(self) -> dict[str, torch.Tensor]:
        """A copy of everything the stream holds: {"memory": (B, Z), "steps": (B,)}."""
        return {"memory": self.memory.detach().clone(), "steps": self.steps.clone()}

    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        """Continue from `state()`'s output (of any stream over a cell of this memory size): exactly."""
        if not isinstance(state, dict) or "memory" not in state:
            raise ValueError("load_state takes the dict that Stream.state() returns, with a 'memory' entry")
        m = state["memory"]
        if not isinstance(m, torch.Tensor) or m.dim() != 2 or m.shape[1] != self.cell.Z:
            shape = tuple(m.shape) if isinstance(m, torch.Tensor) else type(m).__name__
            raise ValueError(f"the state's memory must be (B, {self.cell.Z}) for this cell, got {shape}")
        if not torch.isfinite(m).all():
            raise ValueError("the state's memory holds non-finite values")
        steps = state.get("steps", torch.zeros(m.shape[0], dtype=torch.long))
        if steps.shape != (m.shape[0],):
            raise ValueError(f"the state's steps must be ({m.shape[0]},), got {tuple(steps.shape)}")
        self.memory = m.detach().to(self.memory.device, self.memory.dtype).clone()
        self.steps = steps.clone().long()
        self.batch_size = m.shape[0]
