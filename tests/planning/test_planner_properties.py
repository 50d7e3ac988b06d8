"""Property tests: every planner makes a valid plan for any plausible fingerprint."""

from __future__ import annotations

import math

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from autoseg.data.plans import Configuration, Plans
from autoseg.planners import Budget, get_planner
from autoseg.planners.default import SETTINGS as DEFAULT_SETTINGS
from autoseg.planners.resenc import SETTINGS as RESENC_SETTINGS
from autoseg.planners.rules import Topology, shrink_step
from autoseg.serial import dumps
from tests.planning.test_planners import check_configuration, make_fingerprint

SETTINGS = {"default": DEFAULT_SETTINGS, "resenc": RESENC_SETTINGS}

spacing_value = st.floats(0.3, 8.0, allow_nan=False).map(lambda s: round(s, 3))
spacing = st.tuples(spacing_value, spacing_value, spacing_value)
shape = st.tuples(*[st.integers(8, 600)] * 3)


@st.composite
def fingerprints(draw):
    """1-8 cases around a base spacing and shape (cases vary, as real datasets do)."""
    base_spacing, base_shape = draw(spacing), draw(shape)
    n = draw(st.integers(1, 8))
    jitter = st.floats(0.8, 1.25, allow_nan=False)
    spacings, shapes = [], []
    for _ in range(n):
        spacings.append(tuple(min(8.0, max(0.3, round(s * draw(jitter), 3))) for s in base_spacing))
        shapes.append(tuple(min(600, max(8, round(s * draw(jitter)))) for s in base_shape))
    channels = draw(st.lists(st.sampled_from(["CT", "MRI", "T1", "T2"]), min_size=1, max_size=4))
    relative = draw(st.floats(0.2, 1.0, allow_nan=False))
    return make_fingerprint(spacings, shapes, channels, draw(st.integers(2, 5)), relative)


def cannot_shrink(config: Configuration, plans: Plans) -> bool:
    """True when the planner could not make this configuration's patch any smaller."""
    ndim = config.ndim
    topo = Topology(config.patch_size, config.strides, config.kernel_sizes)
    settings_ = SETTINGS[plans.planner]
    smaller = shrink_step(
        config.spacing[-ndim:],
        topo,
        config.median_shape[-ndim:],
        plans.min_feature_map,
        settings_.max_stages(ndim),
    )
    return smaller is None


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    fingerprint=fingerprints(),
    gpu_memory_gb=st.floats(2.0, 80.0, allow_nan=False),
    min_feature_map=st.sampled_from([4, 8]),
    planner=st.sampled_from(["default", "resenc"]),
)
def test_every_plan_is_valid(fingerprint, gpu_memory_gb, min_feature_map, planner) -> None:
    plans = get_planner(planner)(fingerprint, Budget(gpu_memory_gb, min_feature_map))
    assert {"2d", "3d_fullres"} <= set(plans.configurations)
    event("configurations", ",".join(plans.configurations))
    for config in plans.configurations.values():
        check_configuration(config, plans)
        assert all(s > 0 for s in config.spacing)
        if config.estimated_memory_gb > gpu_memory_gb + 1e-3:
            event("over budget at the smallest patch")
            assert config.batch_size == 2 and cannot_shrink(config, plans)
    full = plans.configuration("3d_fullres")
    if "3d_lowres" in plans.configurations:
        low = plans.configuration("3d_lowres")
        assert math.prod(full.patch_size) < 0.25 * math.prod(full.median_shape)
        assert all(lo >= fu for lo, fu in zip(low.spacing, full.spacing, strict=True))
        assert low.data_identifier != full.data_identifier
    assert plans.configuration("2d").data_identifier == full.data_identifier
    assert dumps(get_planner(planner)(fingerprint, Budget(gpu_memory_gb, min_feature_map))) == (
        dumps(plans)
    )
