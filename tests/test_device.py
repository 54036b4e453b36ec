"""Every method's update, the training loop and evaluation with every tensor on a device that is not
the CPU, so that a tensor made on the CPU inside the hot path is caught; and one update per method in
bf16 autocast.

Without a GPU the device is a fake one: `OnDevice` tensors hold CPU data but say they live on `meta`,
so the library takes its non-CPU branches (the parallel scans of models/scan.py) on real values, and
`DeviceGuard`, a TorchDispatchMode that sees every aten op (the backward pass's too), reports what a
GPU would refuse or pay for:
  - an op mixing CPU tensors with device tensors (a GPU raises "Expected all tensors to be on the same
    device"); 0-dim CPU scalars and CPU index lists are allowed, as CUDA allows them
  - a CPU generator drawing a device tensor (a GPU raises)
  - in the update and the evaluation (`hot=True`): a tensor created on the CPU (torch.zeros(3),
    torch.arange(n), torch.tensor(...) without device=), a host-to-device copy on every step. Draws
    from an explicit CPU generator are allowed: the library draws on the CPU on purpose, so that a
    run's random numbers are the same on every device (training/distributed.py: loss_generator).

MEMTRAIN_TEST_DEVICE=cuda (or mps) runs the same checks on real tensors of that device
(benchmarks/gpu_check.sh); unset or "fake": the fake device.
"""
from __future__ import annotations

import os

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

import memtrain.training.trainer as trainer
from memtrain.methods import METHODS
from memtrain.methods.base import Decision
from memtrain.methods.evaluate import evaluate
from memtrain.methods.smt_dmt import SMTDMT
from memtrain.models.cells import CELLS, TEXTBOOK_KINDS, MLPCell
from memtrain.presets import preset_config
from memtrain.training.build import assemble, autocast_for
from memtrain.training.config import method_settings

aten = torch.ops.aten
WANTED = os.environ.get("MEMTRAIN_TEST_DEVICE", "fake")
FAKE = WANTED == "fake"
DEVICE = torch.device("meta" if FAKE else WANTED)
# ops that may take CPU tensors beside device tensors: copies between devices, CPU index lists, and
# (on a GPU) attention backward passes, which take their dropout seeds as CPU tensors
CROSS_DEVICE = {aten._to_copy.default, aten.copy_.default, aten._copy_from.default,
                *(getattr(aten, f"_scaled_dot_product_{k}_attention_backward").default for k in ("flash", "efficient", "cudnn"))}
INDEX_OPS = {aten.index.Tensor, aten.index_put_.default, aten.index_put.default, aten._index_put_impl_.default}


class OnDevice(torch.Tensor):
    """A CPU tensor `inner` that says it lives on `meta` (the fake device); its ops run on `inner`."""

    @staticmethod
    def __new__(cls, inner: torch.Tensor):
        out = torch.Tensor._make_wrapper_subclass(cls, inner.shape, strides=inner.stride(), storage_offset=inner.storage_offset(),
                                                  dtype=inner.dtype, device="meta", requires_grad=inner.requires_grad)
        out.inner = inner
        return out

    __torch_function__ = torch._C._disabled_torch_function_impl

    def tolist(self):  # (works on a GPU tensor too: a copy to the host)
        return self.inner.tolist()

    def __repr__(self):
        return f"OnDevice({self.inner!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):  # outside any guard: a guard that reports nothing
        with DeviceGuard():
            return func(*args, **(kwargs or {}))


class DeviceGuard(TorchDispatchMode):
    """Runs every op, recording in `found` what a GPU run would refuse or copy (module docstring).
    On the fake device it also carries the ops out: unwrap, run on the CPU, wrap."""

    def __init__(self, hot: bool = False):
        super().__init__()
        self.hot, self.found = hot, []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        tensors = [t for t in pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        on_device = any(t.device.type == DEVICE.type for t in tensors)
        checked = tensors if func not in INDEX_OPS else [t for t in pytree.tree_leaves((args[0], args[2:])) if isinstance(t, torch.Tensor)]
        host = [tuple(t.shape) for t in checked if t.device.type == "cpu" and t.dim() > 0]
        device, gen = kwargs.get("device"), kwargs.get("generator")
        to_device = device is not None and torch.device(device).type == DEVICE.type
        if on_device and host and func not in CROSS_DEVICE:
            self.found.append(f"{func}: CPU tensors of shapes {host} mixed with {DEVICE.type} tensors")
        if to_device and gen is not None and gen.device.type == "cpu":
            self.found.append(f"{func}: a CPU generator draws a {DEVICE.type} tensor")
        if self.hot and not to_device and gen is None and (not tensors or func is aten.lift_fresh.default):
            if device is None or torch.device(device).type == "cpu":
                self.found.append(f"{func}: a tensor created on the CPU (no device=)")
        if not FAKE:
            return func(*args, **kwargs)
        if to_device:
            kwargs["device"] = torch.device("cpu")
        stray = [t for t in tensors if t.device.type == "meta" and not isinstance(t, OnDevice)]
        if stray:  # e.g. torch.tensor(data, device=x.device): made without an aten op, it has no values
            raise RuntimeError(f"{func}: a meta tensor without values (torch.tensor(data, device=...)?); "
                               "the fake device cannot run it: make it with torch.as_tensor(data).to(device)")
        outer = {id(t.inner): t for t in tensors if isinstance(t, OnDevice)}
        args, kwargs = pytree.tree_map(lambda t: t.inner if isinstance(t, OnDevice) else t, (args, kwargs))
        out = func(*args, **kwargs)
        to_host = func is aten._to_copy.default and device is not None and not to_device
        wrap = to_device or (on_device and not to_host)

        def rewrap(t):
            if not isinstance(t, torch.Tensor):
                return t
            if id(t) in outer:  # an in-place op: the same tensor, its shape brought up to date (transpose_)
                w = outer[id(t)]
                if w.shape != t.shape or w.stride() != t.stride():
                    with torch._C._DisableTorchDispatch():
                        w.as_strided_(t.shape, t.stride(), t.storage_offset())
                return w
            return OnDevice(t) if wrap else t

        return pytree.tree_map(rewrap, out)


@pytest.fixture(autouse=True, scope="module")
def _device_present():
    if FAKE:
        return
    if DEVICE.type == "cpu":
        pytest.fail("MEMTRAIN_TEST_DEVICE=cpu checks nothing (every tensor is on the CPU): leave it unset for the fake device")
    present = {"cuda": torch.cuda.is_available, "mps": torch.backends.mps.is_available}.get(DEVICE.type, lambda: False)()
    if not present:
        pytest.fail(f"MEMTRAIN_TEST_DEVICE={WANTED} but there is no such device here")


def build(method: str, kind: str, settings=()):
    """The tiny preset's parts for `method` with a `kind` cell; a fine-tuning method (DMT) gets the
    networks of the run it would start from."""
    cls = METHODS[method]
    base = "smt" if cls.needs_init else method
    parts = assemble(preset_config("tiny", [f"method={base}", f"cell.kind={kind}", "task=retrieval", *settings]))
    if cls.needs_init:
        parts.cfg.method = method
        parts.method = cls(parts.teacher, parts.cell, method_settings(parts.cfg))
    return parts


COMBOS = [(m, k) for m in METHODS for k in CELLS if not (METHODS[m].needs_teacher and k in TEXTBOOK_KINDS)]


def on_device_update(parts):
    """One training update and an evaluation on DEVICE under the guard; -> (first loss, guard findings)."""
    method = parts.method
    x, y = parts.task.sample(4, torch.Generator().manual_seed(0))  # on the CPU, as the trainer draws them
    x_ev, y_ev = parts.task.sample(6, torch.Generator().manual_seed(1))
    with DeviceGuard():
        method.to(DEVICE)
    params = method.trainable()
    opt = torch.optim.AdamW(params, lr=1e-3)
    losses, found = [], []
    for phase in range(2 if isinstance(method, SMTDMT) else 1):  # smt-dmt: an update in each phase
        if phase:
            with DeviceGuard(hot=True) as guard:
                method.apply(Decision("handover", "on the device"), 1)
            found += guard.found
        with DeviceGuard(hot=True) as guard:
            loss, metrics = method(x.to(DEVICE), y.to(DEVICE), torch.Generator().manual_seed(2))
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
        found += guard.found
        with DeviceGuard() as guard:  # (AdamW keeps its step counts on the CPU by design)
            opt.step()
            opt.zero_grad(set_to_none=False)
        found += guard.found
        losses.append(loss)
        assert all(v.device.type == DEVICE.type for v in metrics.values())
    assert all(p.device.type == DEVICE.type and (p.grad is None or p.grad.device.type == DEVICE.type) for p in params)
    with DeviceGuard(hot=True) as guard:
        method.eval()
        method.before_eval()
        ev = evaluate(parts.cell, parts.teacher, x_ev.to(DEVICE), y_ev.to(DEVICE), chunk=4, how=method.rollout)
        method.after_eval(ev, 1)
    found += guard.found
    assert ev["rows"] == 6 and 0 <= ev["rnn_acc"] <= 1
    return losses[0], found


@pytest.mark.parametrize("method,kind", COMBOS)
def test_update_and_evaluation_on_the_device(method, kind):
    torch.manual_seed(0)
    parts = build(method, kind)
    x, y = parts.task.sample(4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        ref, _ = parts.method(x, y, torch.Generator().manual_seed(2))  # the same update's loss on the CPU
    loss, found = on_device_update(parts)
    assert not found, "\n".join(dict.fromkeys(found))
    torch.testing.assert_close(loss.detach().item(), ref.item(), rtol=1e-5 if FAKE else 1e-3, atol=1e-6)


@pytest.mark.parametrize("kind,solver", [("mlp", "newton"), ("lstm", "block"), ("para-gru", "quasi"), ("para-lstm", "block"),
                                         ("torch-lstm", "jacobi"), ("gru", "picard")])
def test_parallel_rollouts_on_the_device(kind, solver):
    """BPTT through the parallel solvers (methods/solve.py), their device branch (matrix scans) included."""
    torch.manual_seed(0)
    loss, found = on_device_update(build("bptt", kind, [f"rollout.solver={solver}"]))
    assert not found, "\n".join(dict.fromkeys(found))
    assert torch.isfinite(loss)


def test_the_guard_catches_a_cpu_tensor_in_the_hot_path(monkeypatch):
    """The check itself: a CPU tensor mixed into a cell update, and one made and copied over."""
    update = MLPCell.update
    monkeypatch.setattr(MLPCell, "update", lambda self, m, x: update(self, m, x) + torch.zeros(m.shape[-1]))
    _, found = on_device_update(build("bptt", "mlp"))
    assert any("mixed with" in f for f in found) and any("created on the CPU" in f for f in found)
    monkeypatch.setattr(MLPCell, "update", lambda self, m, x: update(self, m, x) + torch.zeros(m.shape[-1]).to(m.device))
    _, found = on_device_update(build("bptt", "mlp"))
    assert found and all("aten.zeros.default: a tensor created on the CPU" in f for f in found)


@pytest.mark.parametrize("method", list(METHODS))
def test_training_loop_on_the_device(method, tmp_path, monkeypatch):
    """train(): updates, an evaluation, the method's decisions and the checkpoints, on the device; the
    same numbers as on the CPU (fake device) or close (a GPU)."""
    settings = [f"method={method}", "task=retrieval", "train.steps=2", "train.eval_every=1", "train.precision=fp32",
                "train.tf32=false"]
    if METHODS[method].needs_init:
        trainer.train(preset_config("tiny", ["method=smt", "task=retrieval", "train.steps=1", f"out_dir={tmp_path / 'init'}"]),
                      progress=False)
        settings.append(f"init_from={tmp_path / 'init'}")
    cpu = trainer.train(preset_config("tiny", [*settings, "train.device=cpu"]), progress=False)
    if FAKE:
        monkeypatch.setattr(trainer, "pick_device", lambda name: DEVICE)
    with DeviceGuard() as guard:
        dev = trainer.train(preset_config("tiny", [*settings, f"train.device={'cpu' if FAKE else WANTED}",
                                                   f"out_dir={tmp_path / 'run'}"]), progress=False)
    assert not guard.found, "\n".join(dict.fromkeys(guard.found))
    assert dev["steps"] == 2 and (tmp_path / "run" / "model.safetensors").is_file()
    for key in ("rnn_ce", "teacher_ce"):
        if key in cpu:
            assert dev[key] == pytest.approx(cpu[key], rel=1e-5 if FAKE else 1e-2)


@pytest.mark.parametrize("method,kind", [(m, k) for m, k in COMBOS if k in ("mlp", "memtok", "lstm") or m == "bptt"])
def test_bf16_autocast_update(method, kind):
    """One update under bf16 autocast (train.precision=bf16): a finite loss, and a finite gradient for
    every parameter that gets one in float32."""
    where = torch.device("cpu") if FAKE else DEVICE
    torch.manual_seed(0)
    parts = build(method, kind)
    method_ = parts.method.to(where)
    x, y = (t.to(where) for t in parts.task.sample(4, torch.Generator().manual_seed(0)))
    grads, losses = {}, {}
    for precision in ("fp32", "bf16"):
        method_.zero_grad(set_to_none=True)
        with autocast_for(where, precision):
            loss, _ = method_(x, y, torch.Generator().manual_seed(2))
        loss.backward()
        assert torch.isfinite(loss), precision
        losses[precision] = loss.item()
        grads[precision] = {n: p.grad for n, p in method_.named_parameters() if p.grad is not None}
    assert losses["bf16"] != losses["fp32"], "autocast changed nothing"
    assert grads["bf16"].keys() == grads["fp32"].keys()
    bad = [n for n, g in grads["bf16"].items() if not torch.isfinite(g).all()]
    assert not bad, f"non-finite bf16 gradients: {bad}"
