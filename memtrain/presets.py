"""Presets are data: a name, a line of description, and dotted overrides on `RunConfig()`."""
from __future__ import annotations

from .training.config import RunConfig, apply_overrides

# The defaults (RunConfig()) are the recommended CPU-sized recipe, the one the demo runs: SMT -> DMT
# (method=smt-dmt); a teacher of width 64, 4 heads, 2 encoder layers, 1 decoder layer, K=4 memory tokens
# (Z=256), a one-pass causal encoder with token shift (learns retrieval ~2x sooner, EXPERIMENTS.md
# section 1); a residual MLP cell; SMT decoding 8 memories per sequence, 32 outputs ahead, and asking
# every memory to keep its last input (smt.coef_last_input: makes the memories Markov sooner,
# EXPERIMENTS.md section 7; 0.938 against 0.215 at T=16). Presets name only what they change.

_PAPER = ["method=smt", "teacher.d_model=256", "teacher.mem_tokens=16", "teacher.n_heads=8", "teacher.encoder_depth=8",
          "teacher.decoder_depth=4", "teacher.window=256", "cell.kind=memtok", "cell.depth=8", "smt.future=64",
          "smt.dec_samples=32",
          "train.lr=3e-4", "train.batch_size=128", "train.steps=150000", "train.warmup=1000", "train.schedule=cosine",
          "train.eval_every=2000"]

PRESETS: dict[str, tuple[str, list[str]]] = {
    "retrieval-smt": ("SMT on retrieval, T=64, CPU-sized", ["method=smt", "task=retrieval", 'task_args={"length": 64}']),
    "retrieval-bptt": ("BPTT on retrieval, T=64, same cell", ["method=bptt", "task=retrieval", 'task_args={"length": 64}']),
    # SMT -> DMT at a length where the plain recipe's RNN loses the needle. SMT is error-correcting
    # (EXPERIMENTS.md 12-13): every memory is asked for far-away outputs (smt.far_samples) and the cell is
    # also regressed from its own 1..8-step states (smt.own_steps); 32 sampled transitions keep an update near
    # a second on a CPU core. The rate, 1.5e-3, stays at its peak until the teacher has solved the task and
    # decays to 0 over the next 450 updates (handover.count_from=solved); no pull of the dynamics loss on the
    # teacher until then. 500 updates after the teacher solved the task, whatever the RNN alone does, DMT
    # takes over from the teacher's memories on 32-step rollouts at a constant 3e-4, kept there for at least
    # 150,000 rollout steps (EXPERIMENTS.md 17-19: duration, not rollout length, makes the cell follow). 0.95
    # in 899 and 1,022 s in seeds 0 and 1; seed 2's RNN alone was at 0.40 at 1,800 s, 0.92 at 3,000; seeds 3 and 4
    # in 1,280 and 1,257 s (0.17: 4 of 5 within 30 minutes).
    "retrieval-256": ("SMT -> DMT on retrieval at T=256: SMT until the teacher solves the task and 500 updates more, then DMT on 32-step rollouts; 0.95 in 15-22 minutes of one CPU core (4 of 5 seeds)", [
        "method=smt-dmt", "task=retrieval", 'task_args={"length": 256}', "smt.transitions=32", "smt.far_samples=8",
        "smt.own_steps=8", "handover.smt_patience=20", "train.lr=1.5e-3", "train.schedule=cosine",
        "smt.coef_dyn_teacher=0", "handover.solved_coef_dyn_teacher=0.1", "handover.count_from=solved",
        "train.schedule_steps=500", "handover.smt_steps=500", "handover.dmt_schedule=constant", "handover.dmt_lr_scale=0.2",
        "dmt.start=encoder", "dmt.rollout=32", "dmt.grow=4", "dmt.grow_min_steps=150000",
        "train.steps=5000", "train.eval_every=100", "train.eval_batch=128"]),
    # behaviour cloning (needs `pip install 'memtrain[control]'`): 1,000 expert episodes of popgym's
    # RepeatPreviousEasy (say the suit of the card dealt 4 steps back; 51 steps), collected when the run
    # starts; every evaluation also plays the RNN policy in the environment (rnn_return, 1.0 = the expert).
    # Measured (0.15, seed 0, one thread): teacher 1.000 from update 200, RNN alone 0.992 / return 0.969
    # at 400, 1.000 / 1.000 from 500 and at 800 (417 s); SMT alone did it, no handover to DMT
    "clone-cpu": ("SMT -> DMT behaviour cloning on popgym RepeatPreviousEasy, 1,000 expert episodes collected at the start; the RNN alone played the expert's return (1.000) from update 500, 7 minutes of one CPU core", [
        "method=smt-dmt", "task=control", 'task_args={"env": "repeat-previous", "demos": 1000, "episodes": 20}',
        "train.lr=1e-3", "train.steps=800", "train.eval_every=100", "train.eval_rows=all"]),
    # forecasting (run `memtrain prepare series elecdemand data/elec` first): windows of 384 context steps
    # and a one-week horizon (336 half-hours) on fpp2's half-hourly electricity demand, the target a day and
    # a week back read beside the last one (task_args.lags, as DeepAR's lag features). SMT at 3e-3 on 32
    # sampled transitions per window for 250 updates (its one-step error stays at 0.4-0.8 of a step: the
    # cell alone does not follow), then DMT on 32-step rollouts from the teacher's memories at 0.2 x 3e-3,
    # which brings the RNN alone to the teacher's held-out loss within 50 updates. These are the settings
    # of RESULTS.md "Forecasting" 0.17's SMT -> DMT rows: 812-855 updates in 600 s of one core, CRPS
    # 0.224-0.250 / 0.206-0.257 GW over the first day / week in seeds 0-1 (seasonal naive 0.411 / 0.315;
    # GluonTS's DeepAR 0.130 / 0.199).
    "forecast-cpu": ("SMT -> DMT forecasting half-hourly electricity demand a week ahead (data/elec), reading the demand a day and a week back; 10 minutes of one CPU core", [
        "method=smt-dmt", "task=series",
        'task_args={"path": "data/elec", "context": 384, "horizon": 336, "val_steps": 672, "test_steps": 2688, "lags": [48, 336]}',
        "smt.transitions=32", "train.lr=3e-3", "handover.teacher_acc=null", "handover.teacher_plateau=1", "handover.smt_steps=250",
        "handover.dmt_schedule=constant", "handover.dmt_lr_scale=0.2", "dmt.start=encoder", "dmt.rollout=32",
        "handover.dmt_patience=null", "train.steps=800", "train.eval_every=50", "train.eval_rows=batch", "train.eval_batch=64"]),
    # real data: run `memtrain prepare ...` first (docs/guide.md "Real data"); the path can be overridden with
    # task_args.path=...
    "pixels-cpu": ("SMT on 14x14 binarised MNIST, one image per sequence (T=196), CPU-sized", [
        "method=smt", "task=prepared", 'task_args={"path": "data/mnist14b"}', "train.steps=1500", "train.eval_every=250",
        "train.eval_batch=128"]),
    "text-cpu": ("SMT on byte-level KJV text, T=128, CPU-sized", [
        "method=smt", "task=prepared", 'task_args={"path": "data/kjv", "length": 128}', "train.steps=1500",
        "train.eval_every=250", "train.eval_batch=128"]),
    # the paper's sizes (a GPU): memory 16 x 256, 8-layer encoder, 4-layer decoder, T=320, Tc=256, Tf=64,
    # AdamW lr 3e-4, batch 128, 150k steps; the cell is the memory-token Transformer, 8 blocks as in their code
    "pixels-paper": ("SMT at the paper's sizes on 28x28 MNIST grey levels as one stream (GPU)", _PAPER + [
        "task=prepared", 'task_args={"path": "data/mnist28", "layout": "stream", "length": 320}']),
    "text-paper": ("SMT at the paper's sizes on byte-level text (GPU)", _PAPER + [
        "task=prepared", 'task_args={"path": "data/tinystories", "length": 320}']),
    "tiny": ("a few seconds on a CPU: for smoke tests", [
        "teacher.d_model=16", "teacher.mem_tokens=2", "teacher.n_heads=2", "teacher.encoder_depth=1", "teacher.decoder_depth=1",
        "cell.depth=1",
        'task_args={"length": 12}', "smt.future=12", "smt.dec_samples=4", "smt.unif_samples=16",
        "train.steps=5", "train.eval_every=5", "train.eval_batch=16", "train.batch_size=4", "train.warmup=0"]),
}


def preset_config(name: str | None, overrides: list[str] = ()) -> RunConfig:
    if name is None:
        return apply_overrides(RunConfig(), list(overrides))
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; presets: {sorted(PRESETS)}")
    return apply_overrides(RunConfig(), PRESETS[name][1] + list(overrides))
