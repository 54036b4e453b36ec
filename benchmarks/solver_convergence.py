"""Parallel trajectory solvers against stepping: iterations to converge, seconds, and the cell's
largest Lyapunov exponent, against sequence length, for trained runs and for cells at initialisation.

For each cell (a finished run's, `--runs`; the same configuration with fresh weights, `--init-of`;
or a kind at its standalone sizes on random tokens, `--fresh`) and each length T: one batch of
held-out sequences (the run's task) from the cell's initial memory; the sequential rollout's
seconds (median of --repeats) and, for each solver, the iterations it took (to max |residual| <=
atol + rtol max |m|, or --max-iter, after which it falls back), the fraction of sequences converged,
its seconds (median), and its largest error against the sequential memories. Solvers that need the
Jacobian of a cell without closed-form Jacobians (torch.func: Z backward passes per row) are
skipped when B*T*Z exceeds --jacobian-budget.

    python benchmarks/solver_convergence.py --runs runs/px60/smt runs/px60/dmt --init-of runs/px60/smt \
        --fresh para-gru para-lstm --lengths 16 64 256 1024
"""
from __future__ import annotations

import argparse
import time

import torch
from common import md_table, median, write_results

from memtrain.data.tasks import sample_eval
from memtrain.methods.dynamics import largest_lyapunov
from memtrain.methods.rollout import rollout
from memtrain.methods.solve import SOLVERS, closed_form, solve_rollout
from memtrain.models.cells import CellConfig, build_cell
from memtrain.runs import load_run
from memtrain.training.build import networks

FRESH_VOCAB = 16


def cells(a) -> list[tuple[str, object, object]]:
    """(label, cell, task or None) for every cell asked for."""
    out = []
    for run in a.runs:
        cfg, task, _, cell = load_run(run)
        out.append((f"{run} ({cfg.cell.kind}, trained)", cell, task))
    for run in a.init_of:
        cfg, task, _, _ = load_run(run)
        torch.manual_seed(0)
        _, cell = networks(cfg, with_teacher=False)
        out.append((f"{run} ({cfg.cell.kind}, at init)", cell.eval(), task))
    for kind in a.fresh:
        torch.manual_seed(0)
        out.append((f"{kind} (standalone sizes, at init)", build_cell(CellConfig(kind=kind, vocab_size=FRESH_VOCAB)).eval(), None))
    return out


def inputs(task, batch: int, T: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    if task is None:
        return torch.randint(0, FRESH_VOCAB, (batch, T), generator=g)
    return sample_eval(task, batch, g, length=T)[0]


def timed(fn, repeats: int):
    out, times = None, []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return out, median(times)


def measure(cell, x: torch.Tensor, a) -> dict:
    m0 = cell.init_memory(x.shape[0]).detach()
    with torch.no_grad():
        want, seq_s = timed(lambda: rollout(cell, m0, x), a.repeats)
    lle = largest_lyapunov(cell, m0, x, burn_in=x.shape[1] // 4, gen=torch.Generator().manual_seed(0))
    row = {"T": x.shape[1], "sequential_s": seq_s, "lle_mean": lle.mean().item(), "lle_max": lle.max().item(), "solvers": {}}
    rows_z = x.numel() * cell.Z
    for solver in a.solvers:
        generic = not closed_form(cell, solver)
        if generic and rows_z > a.jacobian_budget:
            row["solvers"][solver] = {"skipped": f"torch.func Jacobians of B*T*Z = {rows_z} > --jacobian-budget"}
            continue
        if solver == "newton" and x.numel() * cell.Z * cell.Z * 4 > a.dense_bytes:
            row["solvers"][solver] = {"skipped": f"dense Jacobians of {x.numel() * cell.Z * cell.Z * 4 / 2**30:.1f} GiB"}
            continue
        (got, report), s = timed(lambda solver=solver: solve_rollout(cell, m0, x, solver=solver, max_iter=a.max_iter,
                                                                     atol=a.atol, rtol=a.rtol), a.repeats)
        row["solvers"][solver] = {"iterations": report.iterations, "converged": report.converged.float().mean().item(),
                                  "fell_back": report.fell_back, "seconds": s, "speedup": seq_s / s,
                                  "max_error": (got - want).abs().max().item()}
        print(f"  T={x.shape[1]} {solver}: {report.iterations} iterations, converged {report.converged.float().mean():.2f}, "
              f"{s:.3f} s against {seq_s:.3f} s stepped", flush=True)
    return row


def table(results: list[dict], solvers: list[str]) -> str:
    header = ["cell", "T", "LLE mean / max", "stepped s", *[f"{s}: iterations / s" for s in solvers]]
    rows = []
    for r in results:
        for m in r["lengths"]:
            cells_ = []
            for s in solvers:
                v = m["solvers"].get(s, {})
                if "skipped" in v:
                    cells_.append("skipped")
                else:
                    mark = "" if v["converged"] == 1.0 else f" ({v['converged']:.0%} conv.)"
                    cells_.append(f"{v['iterations']}{mark} / {v['seconds']:.3f}")
            rows.append([r["cell"], m["T"], f"{m['lle_mean']:.3f} / {m['lle_max']:.3f}", f"{m['sequential_s']:.3f}", *cells_])
    return md_table(header, rows)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", nargs="*", default=[], help="finished runs: their trained cells")
    p.add_argument("--init-of", nargs="*", default=[], help="finished runs: their cell configuration with fresh weights")
    p.add_argument("--fresh", nargs="*", default=[], help="cell kinds at their standalone sizes, on random tokens")
    p.add_argument("--lengths", nargs="+", type=int, default=[16, 64, 256, 1024])
    p.add_argument("--solvers", nargs="+", default=list(SOLVERS), choices=SOLVERS)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-iter", type=int, default=64)
    p.add_argument("--atol", type=float, default=1e-5)
    p.add_argument("--rtol", type=float, default=1e-4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jacobian-budget", type=int, default=2**18)
    p.add_argument("--dense-bytes", type=float, default=2**30)
    p.add_argument("--name", default="solver_convergence", help="the results file's name (another keeps the first table)")
    p.add_argument("--results", default=None)
    a = p.parse_args()
    if not (a.runs or a.init_of or a.fresh):
        p.error("name at least one cell: --runs, --init-of or --fresh")
    torch.set_num_threads(a.threads)
    results = []
    for label, cell, task in cells(a):
        print(label, flush=True)
        lengths = []
        for T in a.lengths:
            try:
                x = inputs(task, a.batch, T)
            except ValueError as e:  # a task that cannot make sequences of this length
                print(f"  T={T}: skipped ({e})")
                continue
            lengths.append(measure(cell, x, a))
        results.append({"cell": label, "lengths": lengths})
    settings = {k: getattr(a, k) for k in ("batch", "max_iter", "atol", "rtol", "repeats", "threads", "jacobian_budget")}
    write_results(a.name, {"settings": settings, "results": results}, table(results, a.solvers),
                  results=a.results)


if __name__ == "__main__":
    main()
