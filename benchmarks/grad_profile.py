"""Gradient profile: how much of the loss's gradient reaches the memory at each timestep.

BPTT: the norm of dL/dm_t (L = cross-entropy at the only supervised position, the end of a retrieval
sequence) against t, for a plain tanh RNN (Elman, no normalisation) under three initialisations of
its recurrent matrix, and for our residual MLP cell under three gains on its weights. The paper
says these gradients vanish or explode with the distance from the loss.

SMT: the norm of dL_SMT/dM_t of the SMT objective (decoder CE on every memory, dynamics and
uniformity terms) with respect to each teacher memory M_t, for a fresh teacher and cell and, when
given, a trained SMT run. SMT supervises every memory directly, so nothing has to travel through time.

Figures are means over a batch of fresh sequences (norms per sequence, then the mean).

    python benchmarks/grad_profile.py [--length 128] [--batch 64] [--run runs/demo/smt]
"""
from __future__ import annotations

import argparse
import math

import torch

from common import grid, legend_under, md_table, write_results
from memtrain.models.cells import build_cell
from memtrain.presets import preset_config
from memtrain.runs import load_run
from memtrain.methods.smt import SMTConfig, smt_loss
from memtrain.data.tasks import build_task
from memtrain.training.build import networks
from memtrain.training.config import resolve
from memtrain.methods.losses import readout_loss


def bptt_profile(cell, x, y) -> list[float]:
    """|dL/dm_t| for t = 0..T (m_0 the initial memory), L the BPTT loss of one rollout."""
    m = cell.init_memory(x.shape[0]).detach().requires_grad_(True)
    mems = [m]
    for s in range(x.shape[1]):
        m = cell.update(m, x[:, s])
        m.retain_grad()
        mems.append(m)
    loss = readout_loss(getattr(cell, "output", None), cell.readout, torch.stack(mems[1:], 1), y)
    loss.backward()
    return [float(mm.grad.norm(dim=-1).mean()) for mm in mems]


def smt_profile(teacher, cell, x, y, cfg: SMTConfig, gen) -> list[float]:
    """|dL_SMT/dM_t| for every teacher memory M_t, t = 0..T (M_0 = m_empty)."""
    held = {}
    encode = teacher.encode

    def keep(xx):
        M = encode(xx)
        M.retain_grad()
        held["M"] = M
        return M

    teacher.encode = keep
    try:
        B, T = x.shape
        dec_pos = torch.arange(1, T + 1).expand(B, T)  # every memory that predicts something
        unif = torch.randperm(B * (T + 1) * teacher.cfg.mem_tokens, generator=gen)[: cfg.unif_samples]
        head = torch.nn.Linear(teacher.cfg.mem_size, teacher.cfg.vocab_size) if cfg.coef_last_input > 0 else None
        loss, _ = smt_loss(teacher, cell, x, y, cfg, dec_pos, None, unif, head)
        loss.backward()
    finally:
        teacher.encode = encode
    return [float(v) for v in held["M"].grad.norm(dim=-1).mean(0)]


def smt_cell_profile(teacher, cell, x, coef_dyn: float) -> list[float]:
    """|dL_dyn/dm_t| on the cell's input memory at each step t = 0..T-1 (the teacher's memories): the
    gradient an RNN step gets under SMT, which never travels through other steps."""
    with torch.no_grad():
        M = teacher.encode(x)
    B, S, Z = M.shape
    m_in = M[:, :-1].clone().requires_grad_(True)
    pred = cell.update(m_in.reshape(-1, Z), x.reshape(-1))
    loss = coef_dyn * torch.nn.functional.mse_loss(pred, M[:, 1:].reshape(-1, Z))
    loss.backward()
    return [float(v) for v in m_in.grad.norm(dim=-1).mean(0)]


def scale_(cell, names: tuple[str, ...], init: str, gain: float, gen) -> None:
    with torch.no_grad():
        for n, p in cell.named_parameters():
            if n.split(".")[0] in names and p.ndim == 2:
                if init == "orthogonal":
                    torch.nn.init.orthogonal_(p, gain=gain, generator=gen)
                elif init == "uniform":
                    bound = gain / math.sqrt(p.shape[1])
                    p.uniform_(-bound, bound, generator=gen)
                elif init == "normal":
                    p.normal_(0.0, gain / math.sqrt(p.shape[1]), generator=gen)
                else:
                    p.mul_(gain)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--length", type=int, default=128)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--run", default=None, help="a finished SMT run to profile as well (e.g. runs/demo/smt)")
    p.add_argument("--results", default=None)
    a = p.parse_args()
    torch.manual_seed(a.seed)
    gen = torch.Generator().manual_seed(a.seed)
    cfg = preset_config("retrieval-smt", [f'task_args={{"length": {a.length}}}'])
    task = build_task(cfg.task, **cfg.task_args)
    x, y = task.sample(a.batch, torch.Generator().manual_seed(a.seed + 1))
    cfg = resolve(cfg, task)  # the vocabulary from the task, the cell's shape from the teacher

    profiles = {}
    # plain tanh RNN: the textbook case (no memory normalisation)
    for label, init, gain in (("Elman tanh, uniform +-1/sqrt(Z) (torch Linear default)", "uniform", 1.0),
                              ("Elman tanh, orthogonal gain 1 (library default)", "orthogonal", 1.0),
                              ("Elman tanh, Gaussian gain 3", "normal", 3.0)):
        c = build_cell(preset_config(None, ["cell.kind=elman", "cell.norm_memory=false", "cell.vocab_size=9"]).cell)
        scale_(c, ("W",), init, gain, gen)
        profiles[label] = ("BPTT", bptt_profile(c, x, y))
    for gain in (0.5, 1.0, 2.0):
        c = build_cell(cfg.cell)
        scale_(c, ("fc", "out"), "scale", gain, gen)
        profiles[f"residual MLP cell (library default), weights x{gain:g}"] = ("BPTT", bptt_profile(c, x, y))
    smt_cfg = SMTConfig(**{**vars(cfg.smt), "dec_samples": None})
    teacher, cell = networks(cfg, with_teacher=True)
    models = [("fresh", teacher, cell, smt_cfg)]
    if a.run:
        rcfg, _, t2, c2 = load_run(a.run)
        models.append((f"trained ({a.run})", t2, c2, SMTConfig(**{**vars(rcfg.smt), "dec_samples": None})))
    for name, t, c, sc in models:
        profiles[f"SMT cell step input, {name}"] = ("SMT-cell", smt_cell_profile(t, c, x, sc.coef_dyn))
        profiles[f"SMT teacher memory M_t, {name}"] = ("SMT-teacher", smt_profile(t, c, x, y, sc, gen))

    rows = []
    T = a.length
    for label, (method, g) in profiles.items():
        last, first = g[-1], g[0]  # the cell-step profile has T entries (t = 0..T-1), the others T+1
        rows.append([method, label, g[-1], g[T // 2], g[0], first / last if last > 0 else None])
    table = md_table(["gradient", "model", "mean norm of dL/dm at the end", f"t={T // 2}", "t=0", "ratio t=0 / end"], rows)
    table += (f"\n\nRetrieval, T={T}, batch {a.batch}. BPTT: dL/dm_t, L = cross-entropy at the last position (the only "
              "supervised one). SMT-cell: the gradient of the dynamics loss on the memory a cell step reads, at each "
              "step (end = t=T-1). SMT-teacher: dL/dM_t of the whole SMT objective (every memory decoded) on each "
              "teacher memory, M_0 = m_empty; its shape follows where the task has targets (the decoder only trains "
              f"memories with a supervised output within {cfg.smt.future} steps ahead), not the distance.")
    data = {"length": T, "batch": a.batch, "seed": a.seed,
            "profiles": {k: {"method": m, "norms": g} for k, (m, g) in profiles.items()}}
    write_results("grad_profile", data, table, draw(data), a.results)
    print(table)


def draw(data: dict):
    """Three panels (BPTT, SMT's cell steps, SMT's teacher memories), each with its legend under it."""
    panels = {"BPTT": "BPTT: gradient reaching m_t", "SMT-cell": "SMT: gradient on the memory\neach cell step reads",
              "SMT-teacher": "SMT: gradient on each\nteacher memory M_t"}
    fig, axes = grid(len(panels), size=(4.6, 3.4))
    ax_of = dict(zip(panels, axes))
    for label, p in data["profiles"].items():
        ax_of[p["method"]].plot(range(len(p["norms"])), [max(v, 1e-30) for v in p["norms"]], label=label)
    for ax, title in zip(axes, panels.values()):
        ax.set_yscale("log")
        ax.set_xlabel("timestep t")
        ax.set_ylabel("mean |dL/dm_t|")
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    for ax in axes:
        legend_under(ax)
    return fig


if __name__ == "__main__":
    main()
