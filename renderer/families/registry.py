"""Every model family the renderer knows, listed explicitly: a family is one adapter file plus one line here.

The order is the order `render models` lists them in, and the order a checkpoint is matched in (`Family.claims`):
where two families load the same class (zeroscope and modelscope), a bare checkpoint resolves to the first.
A family's other published sizes and layouts (`Family.with_variant`) are listed in VARIANTS.
"""
from __future__ import annotations

from .animatediff import ANIMATEDIFF
from .base import Family
from .cross_frame import CONTROLNET_VIDEO, PIX2PIX_VIDEO
from .image_text import I2VGEN_XL, PIA_FAMILY
from .svd import SVD, SVD_XT
from .text2video_zero import T2V_ZERO, T2V_ZERO_SDXL
from .text_to_video_sd import MODELSCOPE, ZEROSCOPE
from .wan import WAN, WAN_1_3B_PRESET, WAN_14B
from .wan22 import WAN22, WAN22_I2V, WAN22_TI2V

FAMILIES: dict[str, Family] = {family.name: family for family in (
    ANIMATEDIFF,
    CONTROLNET_VIDEO,
    PIX2PIX_VIDEO,
    I2VGEN_XL,
    PIA_FAMILY,
    SVD,
    SVD_XT,
    T2V_ZERO,
    T2V_ZERO_SDXL,
    ZEROSCOPE,
    MODELSCOPE,
    WAN,
    WAN22,
)}

# every family's variants beside its first: presets SIZE-FAMILY-VARIANT
VARIANTS: tuple[Family, ...] = (
    WAN_1_3B_PRESET,
    WAN_14B,
    WAN22_I2V,
    WAN22_TI2V,
)

# a preset's name less its size (`wan`, `wan-14b`) -> the family variant it builds
PRESETS: dict[str, Family] = {family.preset: family for family in (*FAMILIES.values(), *VARIANTS)}
