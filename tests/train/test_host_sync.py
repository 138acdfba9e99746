"""The hot loop never waits on the device: no host<->device transfer in a step that does not
log, evaluate or checkpoint (big_vision's `transfer_guard` discipline).

Training runs in-process under `jax.transfer_guard("disallow")`, which rejects implicit
host-to-device transfers (a Python number or NumPy array passed to a jitted function).
On CPU a device-to-host read is free and the guard does not see it, so every read of a
device array's value (`int(x)`, `float(x)`, `np.asarray(x)`, `jax.device_get`) is counted
by wrapping `ArrayImpl._value`, and each one is attributed to the step dispatched last.
"""

import jax
import pytest
import train_helpers as th
import yaml
from jax._src import array as jax_array

from alignjax.train import loop, stage
from alignjax.train.config import load_config

LOG_EVERY = 4


@pytest.mark.slow
def test_steps_that_do_not_log_never_read_device_values(tmp_path, monkeypatch):
    cfg_tree = th.tiny_config(str(tmp_path / "run"))
    cfg_tree["train"].update(log_every=LOG_EVERY, save_every=1000, grad_accum=2)
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(cfg_tree))
    cfg = load_config(str(path))

    events = []  # ("apply", step it dispatches) and ("read", None), in order
    original_value = jax_array.ArrayImpl._value

    def counting_value(self):
        events.append(("read", None))
        return original_value.fget(self)

    original_make = stage.make_step_fns

    def spying_make(*args, **kwargs):
        fns = original_make(*args, **kwargs)
        inner = fns.apply

        def apply(*a):
            events.append(("apply", None))
            return inner(*a)

        return type(fns)(fns.first, fns.accumulate, apply, fns.skip, fns.eval)

    monkeypatch.setattr(jax_array.ArrayImpl, "_value", property(counting_value))
    monkeypatch.setattr(stage, "make_step_fns", spying_make)
    with jax.transfer_guard("disallow"):
        summary = loop.run(cfg)
    assert summary["step"] == th.TOTAL_STEPS

    # reads_after[s]: device reads between dispatching step s and dispatching step s + 1.
    reads_after, step = {}, 0
    for kind, _ in events:
        if kind == "apply":
            step += 1
            reads_after[step] = 0
        elif step:
            reads_after[step] += 1
    assert sorted(reads_after) == list(range(1, th.TOTAL_STEPS + 1))
    stage_ends = {th.SFT_STEPS, th.TOTAL_STEPS}

    def may_read(s):
        # Step s logs, evaluates or checkpoints; or the step before it logged, and its values
        # are read once step s is dispatched.
        logs = lambda t: t % LOG_EVERY == 0 or t in stage_ends  # noqa: E731
        return logs(s) or logs(s - 1)

    quiet = {s: n for s, n in reads_after.items() if not may_read(s)}
    assert quiet, "the schedule must leave steps that neither log nor follow a logging step"
    assert all(n == 0 for n in quiet.values()), f"device reads in steps that do not log: {quiet}"
    assert any(reads_after[s] > 0 for s in reads_after if may_read(s)), "the spy saw no reads at all"
