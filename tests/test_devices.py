"""The per-device speed settings: what they choose, and that choosing them changes no counted image."""

import os
import subprocess
import sys
import warnings

import pytest
import torch

from snipnb import data, devices, models
from snipnb.train import evaluate, fit


def test_bf16_asked_for_where_the_cpu_has_none_falls_back_to_fp32_with_one_warning(monkeypatch):
    monkeypatch.setattr(devices, "bf16_native", lambda device: False)
    monkeypatch.setattr(devices, "_warned", set())
    with pytest.warns(UserWarning, match="bf16 evaluation was asked for, but this cpu .* running evaluation in fp32"):
        assert devices.autocast_enabled("cpu", True, "evaluation") is False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # once per device and purpose, not once per call
        assert devices.autocast_enabled("cpu", True, "evaluation") is False
        assert devices.autocast_enabled("cpu", None, "evaluation") is False  # the default asks for nothing
    with pytest.warns(UserWarning, match="bf16 training"):
        devices.autocast_enabled("cpu", True, "training")


def test_the_defaults_per_device(monkeypatch):
    monkeypatch.setattr(devices, "bf16_native", lambda device: True)
    assert devices.autocast_enabled("cpu", None, "evaluation") and not devices.autocast_enabled("cpu", None, "training")
    assert devices.autocast_enabled("cuda", None, "training") and devices.autocast_enabled("cuda", None, "evaluation")
    assert devices.autocast_enabled("cpu", False, "evaluation") is False  # fp32 stays available
    assert devices.eval_batch_size("cpu") == devices.EVAL_BATCH_SIZE["cpu"]
    assert devices.eval_batch_size("cuda") == devices.DEFAULT_EVAL_BATCH_SIZE
    assert devices.default_stack("cpu") == 1 and devices.default_stack("cuda") == devices.DEFAULT_STACK_SIZE
    assert devices.default_workers("cpu") == devices.cpu_cores() and devices.default_workers("cuda") == 1
    with pytest.raises(ValueError, match="purpose"):
        devices.autocast_enabled("cpu", None, "inference")


def test_the_test_batch_size_changes_no_counted_image():
    kw = dict(num_classes=4, channels=1, image_size=16, per_class=16, test_per_class=50, seed=0)
    train, test = data.synthetic(True, **kw), data.synthetic(False, **kw)
    model = models.build("simple_convnet", 4, 1, 16, seed=0)
    fit(model, train, None, 2, batch_size=16, lr=0.05, device="cpu", progress=False)
    accuracies = {size: evaluate(model, test, batch_size=size, device="cpu", amp=False) for size in (1, 7, 64, 2048)}
    assert len(set(accuracies.values())) == 1, accuracies


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_freed_memory_is_kept_unless_told_to_leave_the_c_library_alone():
    # In a fresh process each: the setting is per process, and this one may have made it already.
    code = "from snipnb import devices; print(devices.keep_freed_memory())"
    env = {**os.environ}
    env.pop("SNIPNB_MALLOC", None)
    kept = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    left = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env={**env, "SNIPNB_MALLOC": "system"}, check=True)
    assert kept.stdout.split()[-1] == "True" and left.stdout.split()[-1] == "False"


@pytest.mark.skipif(sys.platform != "linux", reason="glibc's allocator")
def test_a_test_pass_with_freed_memory_kept_pays_no_page_faults_after_the_first():
    # The reason for the setting: without it every batch's activations are fresh pages from the kernel.
    code = """
import resource, torch
from snipnb import data, models
from snipnb.train import evaluate
torch.set_num_threads(1)
test = data.synthetic(False, num_classes=4, channels=1, image_size=28, per_class=1, test_per_class=256, seed=0)
model = models.build("simple_convnet", 4, 1, 28, seed=0)
evaluate(model, test, batch_size=256, device="cpu", amp=False)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(3):
    evaluate(model, test, batch_size=256, device="cpu", amp=False)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
    env = {**os.environ}
    env.pop("SNIPNB_MALLOC", None)
    kept = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                              check=True).stdout.split()[-1])
    system = int(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                env={**env, "SNIPNB_MALLOC": "system"}, check=True).stdout.split()[-1])
    # One 256-image batch of simple_convnet's first activation alone is 50 MB: ~12,000 pages.
    assert system > 10_000 and kept < system / 20, (kept, system)


def test_cpu_threads_sets_the_count_inside_and_gives_the_callers_back_even_after_an_error():
    before = torch.get_num_threads()
    inside = 1 if before != 1 else 2
    with pytest.raises(RuntimeError, match="inside"):
        with devices.cpu_threads(inside):
            assert torch.get_num_threads() == inside
            raise RuntimeError("inside")
    assert torch.get_num_threads() == before
    for bad in (0, 1.5, True):
        with pytest.raises(ValueError, match="threads must be"):
            with devices.cpu_threads(bad):
                pass
