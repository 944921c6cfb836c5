"""Every image config variant builds, validates, and gives the network of its preset
(shapes from the preset, no data needed)."""

import pytest

from configs import classifier_digits, flow_map_digits, fm_digits, lfm_digits
from lfm_jax.runs import models, validation

SHAPES = {"": (8, 8, 1), "mnist": (28, 28, 1), "cifar10": (32, 32, 3)}


@pytest.mark.parametrize("data", ["", "mnist", "cifar10"])
@pytest.mark.parametrize("module", [fm_digits, lfm_digits, classifier_digits, flow_map_digits])
def test_image_config_variants_validate(module, data):
    config = module.get_config(data)
    validation.validate_config(config)
    expected = {"": "digits", "mnist": "mnist", "cifar10": "cifar10"}[data]
    assert config.data.name == expected
    if module is not classifier_digits:
        kwargs = models.unet_kwargs(config, SHAPES[data])
        assert kwargs["example_shape"] == SHAPES[data]
        assert config.model.unet_preset == (data or "digits8")
    if data == "cifar10" and module is fm_digits:
        assert config.data.random_flip and config.train.steps == 400_000
        assert config.train.lr == 2e-4 and config.train.warmup_steps == 5_000
    if data == "cifar10" and module is lfm_digits:
        assert config.lfm.steps_per_block * 4 == 400_000


def test_unknown_variant_is_an_error():
    with pytest.raises(ValueError, match="unknown image config variant"):
        fm_digits.get_config("cifar100")
