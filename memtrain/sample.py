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
from pathlib import Path

import torch

from .io import atomic_write
from .methods.rollout import Rollout, rollout
from .models.cells import Cell
from .models.teacher import Teacher

STATE_FORMAT = "memtrain-sample-state"
PROMPT_MODES = ("rnn", "teacher")


@torch.no_grad()
def start_memory(cell: Cell, prompt: torch.Tensor, teacher: Teacher | None = None, mode: str = "rnn",
                 how: Rollout | None = None) -> torch.Tensor:
    """Memory (B, Z) after reading prompt (B, P), P >= 1 (mode "rnn": the cell runs through it as `how`
    says, the run's Rollout; None: stepped)."""
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
        B, T = prompt.shape
        at = torch.full((B, 1), T, dtype=torch.long, device=prompt.device)
        return teacher.encode(prompt, at)[:, 0]  # (B, Z): only the memory after the whole prompt
    with torch.no_grad():
        return rollout(cell, cell.init_memory(prompt.shape[0]), prompt, how=how)[:, -1]  # one fused call on torch's cells


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
    atomic_write(path, save(tensors, metadata=meta))


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


# ---- a finished run -------------------------------------------------------------------------------

def _data_kind(task) -> str:
    """'pixels' (one image per sequence, BOS first), 'bytes' (byte-level text) or 'ids' (anything else)."""
    from .data.tasks import PreparedTask, TokenFile

    if isinstance(task, PreparedTask):
        if task.meta["kind"] == "pixels":
            return "pixels" if task.layout == "whole" else "ids"
        return "bytes"
    if isinstance(task, TokenFile) and task.vocab == 256:
        return "bytes"
    return "ids"


def _encode_prompt(kind: str, prompt: str, task, batch: int) -> torch.Tensor:
    if kind == "bytes":
        ids = list(prompt.encode("utf-8"))
    else:
        try:
            ids = [int(t) for t in prompt.replace(",", " ").split()]
        except ValueError:
            raise ValueError(f"the prompt must be token ids separated by spaces or commas for this task, got {prompt!r}") from None
        if kind == "pixels":
            ids = [task.vocab - 1] + ids  # BOS, then the first pixels of the image
    return torch.tensor(ids, dtype=torch.long).expand(batch, -1)


def sample_run(run_dir: str, n_tokens: int | None = None, batch: int = 1, prompt: str | None = None,
               prompt_mode: str = "rnn", temperature: float = 1.0, seed: int = 0, state_in: str | None = None,
               state_out: str | None = None, png: str | None = None) -> dict:
    """Generate from a finished run with the RNN alone. Byte-level text runs take a text prompt (default
    a newline: the RNN reads one token from its initial memory) and return text; pixel runs (a prepared
    image data set, layout 'whole') start from BOS, draw whole images, write them as a PNG grid (`png`,
    default RUN_DIR/samples.png) and score them with the data set's digit classifier when it has one;
    other runs take and return token ids. `state_in` continues a saved generation instead of reading a
    prompt; `state_out` saves the memory and generator state after the last token."""
    from .runs import load_run

    cfg, task, teacher, cell = load_run(run_dir)
    kind = _data_kind(task)
    if batch < 1:
        raise ValueError(f"batch must be >= 1, got {batch}")
    gen = torch.Generator().manual_seed(seed)
    if state_in is not None:
        if prompt is not None:
            raise ValueError("give either a prompt or a saved state (state_in), not both")
        m, g_state, _ = load_state(state_in, mem_size=cell.Z)
        if g_state is not None:
            gen.set_state(g_state)
        prompt_ids = None
    else:
        default = {"bytes": "\n", "pixels": "", "ids": None}[kind]
        if prompt is None and default is None:
            raise ValueError(f"task {cfg.task!r} needs a prompt: token ids, e.g. --prompt '1 2 3'")
        prompt_ids = _encode_prompt(kind, default if prompt is None else prompt, task, batch)
        m = start_memory(cell, prompt_ids, teacher, prompt_mode, Rollout(cfg.rollout))  # as the run rolled out
    if n_tokens is None:
        # pixels: the rest of the image, whatever length the run was trained on
        n_tokens = task.meta["seq_len"] - (0 if prompt_ids is None else prompt_ids.shape[1] - 1) if kind == "pixels" else 256
    tokens, m = generate(cell, m, n_tokens, temperature, gen)
    if state_out is not None:
        save_state(state_out, m, gen, {"run": str(run_dir), "tokens": n_tokens})
    out = {"tokens": tokens.tolist()}
    if kind == "bytes":
        out["text"] = [bytes(row).decode("utf-8", errors="replace") for row in tokens.tolist()]
    if kind == "pixels":
        out.update(_images(task, run_dir, prompt_ids, tokens, png))
    return out


def _images(task, run_dir, prompt_ids, tokens, png) -> dict:
    from pathlib import Path

    from .data.pixels import tokens_to_images, write_png_grid

    S, W = task.meta["image_shape"]
    seq = tokens if prompt_ids is None else torch.cat([prompt_ids[:, 1:], tokens], dim=1)  # drop BOS
    if seq.shape[1] != S * W:
        return {"note": f"{seq.shape[1]} pixels drawn, not a whole {S}x{W} image: no PNG written"}
    levels = task.meta["levels"]
    grid = seq.clamp(max=levels - 1).numpy().astype("uint8").reshape(-1, S, W)  # BOS drawn mid-image counts as white
    path = Path(png) if png else Path(run_dir) / "samples.png"
    write_png_grid(tokens_to_images(grid, levels), path, scale=max(1, 56 // S))
    out = {"png": str(path), "bos_drawn": int((seq >= levels).sum())}
    clf_info = task.meta.get("classifier")
    if clf_info:
        from .data.digits import load_classifier, quality

        out["quality"] = quality(load_classifier(Path(task.path) / clf_info["dir"]), grid)
    return out
