"""Cached outputs of a frozen tower equal the plain forward."""

import pytest
import torch

from vislm.models.frozen_cache import cache_frozen_outputs, uncache
from vislm.models.vision import ViTEncoder


@pytest.fixture
def tower():
    torch.manual_seed(0)
    return ViTEncoder(image_size=16, patch_size=8, dim=16, depth=1, heads=2).requires_grad_(False)


def test_cached_tokens_equal_the_uncached_path(tower):
    pixels = torch.randn(6, 3, 16, 16)
    expected = tower(pixels)
    cache = cache_frozen_outputs(tower)
    first = tower(pixels)
    assert torch.equal(first, expected) and cache.misses == 6  # same batch: bitwise
    again = tower(pixels[[5, 0, 2]])
    assert torch.equal(again, expected[[5, 0, 2]]) and cache.hits == 3
    mixed = torch.cat([pixels[:2], torch.randn(2, 3, 16, 16)])
    torch.testing.assert_close(tower(mixed), (uncache(tower), tower(mixed))[1], rtol=1e-6, atol=1e-6)
    assert "forward" not in tower.__dict__


def test_state_dict_names_unchanged_and_autocast_is_part_of_the_key(tower):
    names = list(tower.state_dict())
    cache = cache_frozen_outputs(tower)
    assert list(tower.state_dict()) == names
    pixels = torch.randn(2, 3, 16, 16)
    tower(pixels)
    with torch.autocast("cpu", torch.bfloat16):
        tower(pixels)
    assert cache.misses == 4 and len(cache.store) == 4


def test_refuses_a_tower_that_still_learns(tower):
    tower.patch.weight.requires_grad_(True)
    cache_frozen_outputs(tower)
    with pytest.raises(RuntimeError, match="frozen"):
        tower(torch.randn(1, 3, 16, 16))
