"""Where the optimiser settings travel: TrainSettings -> TrainingStep -> torch's SGD, and the
order of one step (clip, then update), checked on the values the optimiser actually sees."""

from __future__ import annotations

import pytest
import torch

from autoseg.data.plans import Configuration
from autoseg.training.step import OptimizerSettings, TrainingStep
from tests.inference.test_predict import tiny_config


def _config() -> Configuration:
    return tiny_config("3d_fullres")  # patch 16^3, two stages


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    image = torch.randn(2, 1, 16, 16, 16, generator=gen)
    target = (image > 0.5).long()
    return image, target


def _step(settings: OptimizerSettings) -> TrainingStep:
    return TrainingStep(
        _config(), 1, 2, torch.device("cpu"), settings, augmentation="cpu", cpu_bf16=False
    )


def test_defaults_are_nnunets_optimiser() -> None:
    assert OptimizerSettings() == OptimizerSettings(
        initial_lr=1e-2, momentum=0.99, weight_decay=3e-5, grad_clip=12.0
    )


@pytest.mark.parametrize(
    "settings",
    [OptimizerSettings(), OptimizerSettings(initial_lr=0.05, momentum=0.9, weight_decay=1e-3)],
)
def test_every_optimiser_setting_reaches_sgd(settings: OptimizerSettings) -> None:
    step = _step(settings)
    assert isinstance(step.optimizer, torch.optim.SGD)
    (group,) = step.optimizer.param_groups
    assert group["lr"] == settings.initial_lr
    assert group["momentum"] == settings.momentum
    assert group["weight_decay"] == settings.weight_decay
    assert group["nesterov"] is True and group["dampening"] == 0
    assert step.grad_clip == settings.grad_clip
    # every trainable parameter is optimised, once
    params = [p for g in step.optimizer.param_groups for p in g["params"]]
    assert len(params) == len(list(step.network.parameters()))
    assert {id(p) for p in params} == {id(p) for p in step.network.parameters()}


def _record_step(step: TrainingStep) -> dict:
    """Wrap ``optimizer.step`` to record, at the moment SGD runs, the gradients it uses and the
    parameters before the update."""
    seen: dict = {}
    original = step.optimizer.step

    def recording_step(*args, **kwargs):
        params = list(step.network.parameters())
        seen["grads"] = [p.grad.detach().clone() for p in params]
        seen["before"] = [p.detach().clone() for p in params]
        return original(*args, **kwargs)

    step.optimizer.step = recording_step
    return seen


def test_the_update_uses_clipped_gradients() -> None:
    clip = 1e-3
    step = _step(OptimizerSettings(grad_clip=clip))
    seen = _record_step(step)
    norms: list[float] = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy(params, max_norm, *args, **kwargs):
        total = real_clip(params, max_norm, *args, **kwargs)
        norms.append(float(total))
        return total

    torch.nn.utils.clip_grad_norm_ = spy
    try:
        step.train_step(*_batch())
    finally:
        torch.nn.utils.clip_grad_norm_ = real_clip
    assert norms and norms[0] > 10 * clip  # clipping had work to do
    at_step = torch.linalg.vector_norm(torch.stack([g.norm() for g in seen["grads"]]))
    assert float(at_step) <= clip * (1 + 1e-3)


def test_one_step_is_nesterov_sgd_with_weight_decay_by_hand() -> None:
    """First step from zero momentum: buf = g + wd * p; update = lr * (g + wd * p) * (1 + m)."""
    settings = OptimizerSettings(initial_lr=0.1, momentum=0.9, weight_decay=0.01, grad_clip=1e9)
    step = _step(settings)
    seen = _record_step(step)
    step.train_step(*_batch())
    for before, grad, after in zip(
        seen["before"], seen["grads"], step.network.parameters(), strict=True
    ):
        d = grad + settings.weight_decay * before
        expected = before - settings.initial_lr * (1 + settings.momentum) * d
        torch.testing.assert_close(after.detach(), expected, rtol=1e-5, atol=1e-7)


def test_second_step_carries_momentum() -> None:
    """Two steps on the same batch: the second update holds m * (the first step's buffer)."""
    settings = OptimizerSettings(initial_lr=0.05, momentum=0.5, weight_decay=0.0, grad_clip=1e9)
    step = _step(settings)
    seen = _record_step(step)
    image, target = _batch()
    step.train_step(image, target)
    g1 = seen["grads"]
    step.train_step(image, target)
    g2, before2 = seen["grads"], seen["before"]
    for p, a, b, after in zip(before2, g1, g2, step.network.parameters(), strict=True):
        buf = settings.momentum * a + b
        expected = p - settings.initial_lr * (b + settings.momentum * buf)
        torch.testing.assert_close(after.detach(), expected, rtol=1e-5, atol=1e-7)


def test_train_settings_optimizer_reaches_the_step(monkeypatch, tmp_path) -> None:
    """train_fold hands TrainSettings.optimizer to TrainingStep and decays the rate by poly."""
    from autoseg.data.paths import resolve_dataset
    from autoseg.data.plans import Plans
    from autoseg.planning.runner import plan_dataset
    from autoseg.training import train as train_module
    from autoseg.training.fold_setup import TrainSettings, poly_lr
    from autoseg.training.train import train_fold
    from tests.synthetic import write_dataset

    data = write_dataset(tmp_path / "Task98_Wiring", n_cases=5, shape_ijk=(20, 24, 16))
    home = tmp_path / "home"
    plan_dataset(str(data), home=home, planner="default", gpu_memory_gb=8.0, workers=1)
    dirs = resolve_dataset("Task98_Wiring", home)
    plans = Plans.from_json(dirs.plans())
    settings = OptimizerSettings(initial_lr=0.03, momentum=0.8, weight_decay=1e-4, grad_clip=5.0)
    built: list[TrainingStep] = []
    lrs: list[float] = []

    class Recording(TrainingStep):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            built.append(self)

        def set_lr(self, lr: float) -> None:
            lrs.append(lr)
            super().set_lr(lr)

    monkeypatch.setattr(train_module, "TrainingStep", Recording)
    run = TrainSettings(
        epochs=3, iterations=1, val_iterations=1, device="cpu", validate=False, optimizer=settings
    )
    train_fold(dirs, plans, "3d_fullres", "0", run)
    (step,) = built
    (group,) = step.optimizer.param_groups
    assert (group["momentum"], group["weight_decay"], group["nesterov"]) == (0.8, 1e-4, True)
    assert step.grad_clip == 5.0
    assert lrs[:3] == pytest.approx([poly_lr(0.03, e, 3) for e in range(3)])
