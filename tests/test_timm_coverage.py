"""Every ViT architecture of timm's vision_transformer.py converts to vit-custom and back, or is refused by name."""

import pytest

from modeling_vit_custom.interop.timm_coverage import TOLERANCE, architectures, check_architecture

# The features vit-custom leaves out, and the architectures that use them (timm 1.0.31).
REFUSED = {
    "ParallelThingsBlock blocks": {"vit_base_patch16_18x2_224", "vit_small_patch16_18x2_224"},
    "ParallelScalingBlock blocks": {
        "vit_base_patch16_xp_224",
        "vit_large_patch14_xp_224",
        "vit_huge_patch14_xp_224",
        "vit_pwee_patch16_reg1_gap_256",
    },
    "DiffParallelScalingBlock blocks": {"vit_dpwee_patch16_reg1_gap_256"},
    "DiffAttention": {"vit_dlittle_patch16_reg1_gap_256", "vit_dwee_patch16_reg1_gap_256"},
    "ResPostBlock blocks": {"vit_base_patch16_rpn_224"},
    "pool_include_prefix=True": {"test_vit3"},
}
REFUSAL = {name: feature for feature, names in REFUSED.items() for name in names}
ARCHITECTURES = architectures()


def test_at_least_nine_in_ten_architectures_convert():
    assert len(ARCHITECTURES) >= 150
    assert REFUSAL.keys() <= set(ARCHITECTURES)
    assert 1 - len(REFUSAL) / len(ARCHITECTURES) >= 0.9


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_architecture_converts_both_ways_or_is_refused_by_name(name):
    result = check_architecture(name, small=True)
    if name in REFUSAL:
        assert result.status == "refused" and REFUSAL[name] in result.reason, result
    else:
        assert result.status == "converted", result
        assert result.timm_to_ours <= TOLERANCE and result.ours_to_timm <= TOLERANCE


@pytest.mark.parametrize("name", ["test_vit2", "test_vit4"])  # registers, no class token, LayerScale, RMSNorm
def test_a_timm_run_of_a_zoo_architecture_converts_with_its_class_names(name, tmp_path):
    """`--model timm:NAME` builds the architecture for the run's classes; its saved folder converts both ways."""
    import torch

    from modeling_vit_custom.interop.timm_conversion import from_timm, max_abs_logit_diff, to_timm
    from modeling_vit_custom.training.arguments import ModelArguments
    from modeling_vit_custom.training.models import build_model

    model, settings = build_model(ModelArguments(model=f"timm:{name}"), ["cat", "dog", "owl"])
    ours = from_timm(model.eval())
    assert ours.config.id2label == {0: "cat", 1: "dog", 2: "owl"}
    assert not ours.config.class_token and ours.config.num_register_tokens == 1
    size = settings.image_size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    assert max_abs_logit_diff(ours, model, pixels) <= TOLERANCE
    assert max_abs_logit_diff(to_timm(ours), ours, pixels) <= TOLERANCE
