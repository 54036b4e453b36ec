"""Seconds per evaluation pass, per DMT update (its RNN side) and per BPTT update, the cell stepped
(`rollout.solver=sequential`) against each parallel solver, for sequence lengths T, on this machine.

Each cell is built at its standalone sizes (fresh weights, random tokens, batch --batch). The three
workloads are what `rollout` does inside the library's loops:
- eval: the RNN alone through the sequence, no graph, then the readout at every step;
- dmt: the rollout with one-step gradients (grad_horizon=1), a regression loss on every memory
  against fixed targets, backward, clip, AdamW (the teacher's target pass of a real DMT update is
  not included: it is the same for every solver);
- bptt: the rollout with the whole graph (the implicit adjoint for a parallel solver), next-token
  cross-entropy of the readout at every step, backward, clip, AdamW.
Solvers without a closed-form Jacobian for the cell (quasi needs `jacobian_diag`, block
`jacobian_block`) and newton (dense Jacobians) are skipped: torch.func Jacobians of Z rows per step
cost far more than stepping on a CPU (benchmarks/solver_convergence.py measures them). Unconverged
sequences fall back to stepping after --max-iter iterations; the table says how often.

    python benchmarks/solver_speed.py --cells para-gru para-lstm mlp --lengths 64 256 1024

`--parts` times instead the pieces one solver iteration is made of, beside stepping the same batch
(no graph, medians of --repeats): one batched cell call over all B*T rows (what jacobi costs per
iteration), the closed-form diagonal and block Jacobians where the cell has them, and their scans
(elementwise for quasi, of the small blocks for block) by each scheme of models/scan.py: the loop,
Hillis-Steele, odd-even reduction. No solver can beat stepping on a machine where the batched call
alone is slower than stepping.

    python benchmarks/solver_speed.py --parts --cells para-gru para-lstm --lengths 256 1024
"""
from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F
from common import interleaved, md_table, median, training_update, write_results

from memtrain.methods.rollout import AutoSolver, Rollout, RolloutConfig, rollout
from memtrain.methods.solve import Linearisation, closed_form, solve_rollout, step_all
from memtrain.models import scan
from memtrain.models.cells import CellConfig, build_cell

VOCAB = 16
SCANS = {"diag": {"loop": scan.linear_scan_reference, "Hillis-Steele": scan.linear_scan, "odd-even": scan.linear_scan_pairs},
         "block": {"loop": scan.matrix_scan_reference, "Hillis-Steele": scan.matrix_scan, "odd-even": scan.matrix_scan_pairs}}


def workloads(cell, x: torch.Tensor, how: Rollout) -> dict:
    """name -> a function of no arguments doing one pass / update with this solver."""
    params = list(cell.parameters())
    m0 = cell.init_memory(x.shape[0])
    target = torch.randn(x.shape[0], x.shape[1], cell.Z, generator=torch.Generator().manual_seed(1))

    def read(memories):  # (B, T, Z) -> logits (B*T, V): the readout takes flat (N, Z) memories
        return cell.readout(memories.reshape(-1, cell.Z))

    @torch.no_grad()
    def evaluate():
        return read(rollout(cell, m0, x, how=how)[:, 1:])

    def dmt_loss():
        return F.mse_loss(rollout(cell, m0, x, grad_horizon=1, how=how)[:, 1:], target)

    def bptt_loss():
        return F.cross_entropy(read(rollout(cell, m0, x, how=how)[:, :-1]), x.reshape(-1))

    return {"eval": evaluate, "dmt": training_update(dmt_loss, params), "bptt": training_update(bptt_loss, params)}


def measure(kind: str, T: int, a) -> dict:
    torch.manual_seed(0)
    cell = build_cell(CellConfig(kind=kind, vocab_size=VOCAB))
    x = torch.randint(0, VOCAB, (a.batch, T), generator=torch.Generator().manual_seed(0))
    row = {"cell": kind, "T": T, "solvers": {}}
    for solver in a.solvers:
        if solver not in ("sequential", "auto") and not closed_form(cell, solver):
            continue
        how = Rollout(RolloutConfig(solver=solver, max_iter=a.max_iter))
        fns = workloads(cell, x, how)
        if solver == "auto":  # its trials first (each workload is its own kind of call), then what it chose is timed
            for fn in fns.values():
                for _ in range(2 * len(AutoSolver(cell).candidates)):
                    fn()
        times = interleaved(fns, a.repeats)
        entry = {name: median(ts) for name, ts in times.items()}
        if solver == "auto":
            chosen = {(c["grad"], c["grad_horizon"]): c["chosen"] for c in how.choices()}
            entry["chosen"] = {"eval": chosen[False, None], "dmt": chosen[True, 1], "bptt": chosen[True, None]}
        elif solver != "sequential":
            with torch.no_grad():
                _, report = solve_rollout(cell, cell.init_memory(a.batch), x, solver=solver, max_iter=a.max_iter)
            entry.update(iterations=report.iterations, converged=report.converged.float().mean().item())
        row["solvers"][solver] = entry
        print(f"{kind} T={T} {solver}: " + ", ".join(f"{k} {v:.3f} s" for k, v in entry.items() if k in fns), flush=True)
    return row


@torch.no_grad()
def parts(kind: str, T: int, a) -> dict:
    """Seconds of each piece of a solver iteration against stepping, for one cell and length."""
    torch.manual_seed(0)
    cell = build_cell(CellConfig(kind=kind, vocab_size=VOCAB))
    gen = torch.Generator().manual_seed(0)
    x = torch.randint(0, VOCAB, (a.batch, T), generator=gen)
    m0 = cell.init_memory(a.batch)
    prev = torch.randn(a.batch, T, cell.Z, generator=gen)
    fns = {"stepped": lambda: rollout(cell, m0, x), "cell call (B*T rows)": lambda: step_all(cell, prev, x)}
    for solver in ("quasi", "block"):
        if closed_form(cell, solver):
            lin = Linearisation(solver, cell, prev, x)
            fns[f"{lin.structure} Jacobian"] = lambda s=solver: Linearisation(s, cell, prev, x)
            b, c0 = (prev, m0) if lin.structure == "diag" else (prev[..., lin.idx], m0[..., lin.idx])
            for scheme, fn in SCANS[lin.structure].items():
                fns[f"{lin.structure} scan, {scheme}"] = lambda fn=fn, A=lin.A, b=b, c0=c0: fn(A, b, c0)
    times = interleaved(fns, a.repeats)
    row = {"cell": kind, "T": T, "seconds": {name: median(ts) for name, ts in times.items()}}
    print(f"{kind} T={T}: " + ", ".join(f"{k} {v:.4f} s" for k, v in row["seconds"].items()), flush=True)
    return row


def parts_table(rows: list[dict]) -> str:
    names = list(dict.fromkeys(n for r in rows for n in r["seconds"]))
    out = [[r["cell"], r["T"], *(f"{r['seconds'][n]:.4f}" if n in r["seconds"] else "-" for n in names)] for r in rows]
    return md_table(["cell", "T", *(f"{n} s" for n in names)], out) + (
        "\n\nMedians of --repeats rounds, no graph, batch --batch, one thread unless --threads. A quasi iteration "
        "costs one cell call + the diagonal Jacobian + its scan; a block iteration the same with the blocks. "
        "The solvers scan by the loop on a CPU and by odd-even reduction elsewhere (models/scan.py).")


def table(rows: list[dict]) -> str:
    out = []
    for r in rows:
        base = r["solvers"].get("sequential")
        for solver, e in r["solvers"].items():
            conv = ("-" if solver == "sequential" else f"chose {' / '.join(e['chosen'][w] for w in ('eval', 'dmt', 'bptt'))}"
                    if solver == "auto" else f"{e['iterations']} / {e['converged']:.0%}")
            ratios = [f"{e[w]:.3f}" + ("" if base is None or solver == "sequential" else f" ({base[w] / e[w]:.2f}x)")
                      for w in ("eval", "dmt", "bptt")]
            out.append([r["cell"], r["T"], solver, conv, *ratios])
    return md_table(["cell", "T", "solver", "iterations / converged", "eval pass s", "DMT update s (RNN side)",
                     "BPTT update s"], out) + (
        "\n\nMedians of --repeats interleaved rounds; in brackets the speed-up over stepping the same cell "
        "(above 1: the solver is faster). Iterations of the forward solve on the same batch; for auto, what it chose "
        "for the eval / DMT / BPTT calls after its trials (which are not timed).")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", nargs="+", default=["para-gru", "para-lstm", "mlp"])
    p.add_argument("--lengths", nargs="+", type=int, default=[64, 256, 1024])
    p.add_argument("--solvers", nargs="+", default=["sequential", "jacobi", "quasi", "block"],
                   choices=["sequential", "jacobi", "picard", "quasi", "block", "auto"])
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--max-iter", type=int, default=64)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--parts", action="store_true", help="time the pieces of one solver iteration instead (module docstring)")
    p.add_argument("--results", default=None)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    settings = {k: getattr(a, k) for k in ("batch", "max_iter", "repeats", "threads")}
    if a.parts:
        rows = [parts(kind, T, a) for kind in a.cells for T in a.lengths]
        write_results("solver_parts", {"settings": settings, "rows": rows}, parts_table(rows), results=a.results)
        return
    rows = [measure(kind, T, a) for kind in a.cells for T in a.lengths]
    write_results("solver_speed", {"settings": settings, "rows": rows}, table(rows), results=a.results)


if __name__ == "__main__":
    main()
