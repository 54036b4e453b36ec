"""Generation with the RNN alone: constant memory per token.

The RNN's state is one (B, Z) memory. After reading x_0..x_t it holds m_t, and `cell.readout(m_t)`
gives the distribution of the next token x_{t+1} (for language data y_t = x_{t+1}). Sampling is
therefore: readout -> draw a token -> update -> readout ..., never keeping more than one memory.

Where the first memory comes from (`start_memory`):
- "rnn": the cell reads the prompt itself from its initial memory (the RNN alone, end to end);
- "teacher": the teacher encodes the prompt in one pass and hands its memory to the cell, as the
  paper's authors sample; the rest of the generation is the RNN alone.
Memory after the prompt can be saved and resumed (`save_state` / `load_state`): the state file holds
the memory and the generator's state, so a resumed generation continues exactly where it stopped.

Legend: B batch, P prompt length, N generated tokens, Z memory size, V vocabulary.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch

from .cells import Cell
from .teacher import Teacher

STATE_FORMAT = "memtrain-sample-state"
PROMPT_MODES = ("rnn", "teacher")


@torch.no_grad()
def start_memory(cell: Cell, prompt: torch.Tensor, teacher: Teacher | None = None, mode: str = "rnn") -> torch.Tensor:
    """Memory (B, Z) after reading prompt (B, P), P >= 1."""
    if mode not in PROMPT_MODES:
        raise ValueError(f"prompt mode must be one of {PROMPT_MODES}, got {mode!r}")
    if prompt.dim() != 2 or prompt.shape[1] < 1:
        raise ValueError(f"the prompt must hold at least one token, got shape {tuple(prompt.shape)}")
    V = cell.cfg.vocab_size
    if int(prompt.min()) < 0 or int(prompt.max()) >= V:
        raise ValueError(f"prompt token ids must lie in [0, {V - 1}] (the vocabulary), got [{int(prompt.min())}, {int(prompt.max())}]")
    if mode == "teacher":
        if teacher is None:
            raise ValueError("prompt mode 'teacher' needs a run with a teacher (SMT or DMT), this one has none")
        return teacher.encode(prompt)[:, -1]  # (B, Z): memory after the whole prompt
    m = cell.init_memory(prompt.shape[0])
    for s in range(prompt.shape[1]):
        m = cell.update(m, prompt[:, s])
    return m


def draw(logits: torch.Tensor, temperature: float, gen: torch.Generator | None) -> torch.Tensor:
    """One token per row from logits (B, V); temperature 0 is greedy."""
    if temperature == 0:
        return logits.argmax(-1)
    probs = torch.softmax(logits.float() / temperature, dim=-1)  # (B, V)
    return torch.multinomial(probs.cpu(), 1, generator=gen).squeeze(1).to(logits.device)


@torch.no_grad()
def generate(cell: Cell, m: torch.Tensor, n_tokens: int, temperature: float = 1.0,
             gen: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """From memory m (B, Z) draw n_tokens -> (tokens (B, N), memory after the last one (B, Z)).
    Only the current memory is kept: memory use does not grow with N."""
    if n_tokens < 0:
        raise ValueError(f"the number of tokens to generate must be >= 0, got {n_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    out = torch.empty(m.shape[0], n_tokens, dtype=torch.long, device=m.device)
    for i in range(n_tokens):
        x = draw(cell.readout(m), temperature, gen)  # (B,)
        out[:, i] = x
        m = cell.update(m, x)
    return out, m


def save_state(path: str | Path, m: torch.Tensor, gen: torch.Generator | None = None, info: dict | None = None) -> None:
    """Write memory (B, Z) and the generator state to a safetensors file (atomic)."""
    from safetensors.torch import save

    tensors = {"memory": m.detach().to("cpu").contiguous()}
    if gen is not None:
        tensors["generator"] = gen.get_state()
    meta = {"format": STATE_FORMAT, "info": json.dumps(info or {})}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(save(tensors, metadata=meta))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def load_state(path: str | Path, mem_size: int | None = None) -> tuple[torch.Tensor, torch.Tensor | None, dict]:
    """-> (memory (B, Z), generator state or None, info). Refuses anything but a state file."""
    from safetensors import SafetensorError, safe_open

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"state file {str(p)!r} does not exist")
    try:
        with safe_open(str(p), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != STATE_FORMAT:
                raise ValueError(f"state file {str(p)!r} is not a memtrain sampling state (format {meta.get('format')!r})")
            names = set(f.keys())
            m = f.get_tensor("memory") if "memory" in names else None
            g = f.get_tensor("generator") if "generator" in names else None
            info = json.loads(meta.get("info", "{}"))
    except (SafetensorError, OSError, json.JSONDecodeError) as e:
        raise ValueError(f"state file {str(p)!r} is corrupt ({e})") from None
    if m is None or m.dim() != 2:
        raise ValueError(f"state file {str(p)!r} holds no (B, Z) memory")
    if mem_size is not None and m.shape[1] != mem_size:
        raise ValueError(f"state file {str(p)!r} holds memories of size {m.shape[1]}, this cell's memory size is {mem_size}")
    return m, g, info
