"""The intra-op thread choice of CPU training (`--cpu_threads`)."""

from __future__ import annotations

import pytest
import torch
from conftest import make_trainer, requires_accelerate, run_args

from internimage_hf.training.threads import SMALL_STEP_PIXELS, apply_cpu_threads, choose_cpu_threads


@pytest.fixture
def no_omp_env(monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.fixture
def restore_threads():
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_auto_picks_one_thread_for_small_steps_only(no_omp_env):
    assert choose_cpu_threads(0, batch_size=32, image_size=32) == 1  # the built-in digits run
    assert choose_cpu_threads(0, batch_size=8, image_size=224) is None  # InternImage-T at 224: all cores
    assert SMALL_STEP_PIXELS == 224 * 224
    assert choose_cpu_threads(0, batch_size=1, image_size=223) == 1
    assert choose_cpu_threads(0, batch_size=1, image_size=224) is None


def test_explicit_choices_win(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    assert choose_cpu_threads(0, batch_size=32, image_size=32) is None
    assert choose_cpu_threads(3, batch_size=32, image_size=32) == 3
    with pytest.raises(ValueError, match="`cpu_threads` must be >= 0"):
        choose_cpu_threads(-1, batch_size=32, image_size=32)


def test_apply_sets_threads_on_cpu_only(no_omp_env, restore_threads):
    torch.set_num_threads(2)
    assert apply_cpu_threads(0, 32, 32, torch.device("meta")) == 2
    assert apply_cpu_threads(0, 32, 32, torch.device("cpu")) == 1
    assert apply_cpu_threads(2, 32, 32, torch.device("cpu")) == 2


@requires_accelerate
@pytest.mark.parametrize(("flags", "threads"), [((), 1), (("--cpu_threads", "2"), 2)])
def test_trainer_applies_the_choice(imagefolder, tmp_path, no_omp_env, restore_threads, flags, threads):
    torch.set_num_threads(2)
    trainer = make_trainer(run_args(imagefolder, tmp_path, "--max_steps", "1", *flags))  # 40 px images: small steps
    try:
        assert trainer.cpu_threads == torch.get_num_threads() == threads
    finally:
        trainer._release()
