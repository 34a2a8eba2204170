"""The step-time cache behind `mwnet plan`: a CPU entry measured on a busy machine is measured again when
the machine is quieter, and the faster times are kept; otherwise the cache is never re-probed."""

import json

import pytest

from mwnet import plan
from mwnet.config import BackboneSpec
from mwnet.plan import StepTimes

NET = BackboneSpec(name="resnet", depth=8, width=16, dropout=0.0)


@pytest.fixture
def probes(tmp_path, monkeypatch):
    """Cache in tmp; probe() replaced by a stand-in that returns the next queued StepTimes."""
    monkeypatch.setenv("MWNET_CACHE_DIR", str(tmp_path))
    queue, calls = [], []

    def fake_probe(backbone, num_classes, batch, device, threads, compute=None, **recipe):
        calls.append(batch)
        return queue.pop(0)

    monkeypatch.setattr(plan, "probe", fake_probe)
    return queue, calls


def set_load(monkeypatch, per_core):
    monkeypatch.setattr(plan, "cpu_load", lambda: per_core)


def test_busy_measurement_is_redone_when_quieter_keeping_the_faster(probes, monkeypatch):
    queue, calls = probes
    set_load(monkeypatch, 1.6)  # another job on every core
    queue.append(StepTimes(100, 2.0, 8.0, 0.004))
    assert plan.step_times(NET, 10, 100, "cpu", 1) == StepTimes(100, 2.0, 8.0, 0.004)
    assert plan.step_times(NET, 10, 100, "cpu", 1).mwnet_s == 8.0 and len(calls) == 1  # still busy: cached

    set_load(monkeypatch, 0.2)  # quiet now: measured again; per field the faster value wins
    queue.append(StepTimes(100, 1.0, 9.0, 0.002))
    assert plan.step_times(NET, 10, 100, "cpu", 1) == StepTimes(100, 1.0, 8.0, 0.002)
    assert len(calls) == 2
    entry = next(iter(json.loads(plan.cache_path().read_text()).values()))
    assert entry["load"] == 0.2 and entry["times"]["plain_s"] == 1.0
    assert plan.step_times(NET, 10, 100, "cpu", 1) == StepTimes(100, 1.0, 8.0, 0.002) and len(calls) == 2


def test_quiet_measurement_and_no_measure_mode_never_reprobe(probes, monkeypatch):
    queue, calls = probes
    set_load(monkeypatch, 0.3)
    queue.append(StepTimes(100, 1.0, 4.0, 0.001))
    plan.step_times(NET, 10, 100, "cpu", 1)
    set_load(monkeypatch, 0.0)
    assert plan.step_times(NET, 10, 100, "cpu", 1) == StepTimes(100, 1.0, 4.0, 0.001) and len(calls) == 1
    # a busy entry is returned as it is when the caller does not allow measuring (a training run's own estimate)
    plan.seed_cache([(NET, 64, "cpu", 1, StepTimes(64, 3.0, 9.0, 0.01))])
    data = json.loads(plan.cache_path().read_text())
    for v in data.values():
        v["load"] = 2.0
    plan.cache_path().write_text(json.dumps(data))
    assert plan.step_times(NET, 10, 64, "cpu", 1, measure=False) == StepTimes(64, 3.0, 9.0, 0.01)
    assert len(calls) == 1


def test_times_are_kept_per_precision_and_memory_format(probes, monkeypatch):
    """A step time measured in fp32 never stands in for bf16 (or another layout): each is its own entry,
    and the probe is given the settings training will use."""
    from mwnet.compute import Compute

    queue, calls = probes
    set_load(monkeypatch, 0.0)
    seen = []
    monkeypatch.setattr(plan, "probe", lambda *a, **recipe: seen.append(a[-1]) or queue.pop(0))
    queue += [StepTimes(100, 2.0, 8.0, 0.004), StepTimes(100, 1.0, 3.0, 0.002)]
    fp32, bf16 = Compute("fp32", "channels_last"), Compute("bf16", "channels_last")
    assert plan.step_times(NET, 10, 100, "cpu", 1, compute=fp32).mwnet_s == 8.0
    assert plan.step_times(NET, 10, 100, "cpu", 1, compute=bf16).mwnet_s == 3.0
    assert plan.step_times(NET, 10, 100, "cpu", 1, compute=fp32).mwnet_s == 8.0  # cached, not re-probed
    assert seen == [fp32, bf16]


def test_the_probe_steps_with_the_recipes_optimisers(probes, monkeypatch):
    """`mwnet plan` times the optimisers training will use (params/recipes.yaml), not numbers of its own."""
    from mwnet.config import load_params

    queue, _ = probes
    set_load(monkeypatch, 0.0)
    seen = {}
    monkeypatch.setattr(plan, "probe", lambda *a, **kw: seen.update(kw) or StepTimes(100, 1.0, 4.0, 0.001))
    params = load_params("params", profile="full")
    plan.run_estimate(params, "cifar10", "imbalance_100", "1-100-1", "cpu", 1)
    recipe = params.recipe_for("imbalance_100")
    assert seen["optimizers"] == (recipe.classifier_optimizer, recipe.weighting_optimizer)
    assert seen["vnet_arch"] in params.grid.archs
