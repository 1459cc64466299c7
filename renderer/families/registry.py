"""Every model family the renderer knows, listed explicitly: a family is one adapter file plus one line here.

The order is the order `render models` lists them in, and the order a checkpoint is matched in (`Family.claims`):
where two families load the same class (zeroscope and modelscope), a bare checkpoint resolves to the first.
A family's other published sizes and layouts (`Family.with_variant`) are listed in VARIANTS.
"""
from __future__ import annotations

from .animatediff import ANIMATEDIFF
from .base import Family
from .cogvideox import COGVIDEOX, COGVIDEOX_1_5, COGVIDEOX_2B, COGVIDEOX_I2V
from .cross_frame import CONTROLNET_VIDEO, PIX2PIX_VIDEO
from .hunyuanvideo import HUNYUANVIDEO, HUNYUANVIDEO_I2V
from .image_text import I2VGEN_XL, PIA_FAMILY
from .ltx import LTX, LTX_2B, LTX_13B
from .skyreels import DF_14B_540P, DF_14B_720P, SKYREELS_DF, SKYREELS_DF_1_3B
from .svd import SVD, SVD_XT
from .text2video_zero import T2V_ZERO, T2V_ZERO_SDXL
from .text_to_video_sd import MODELSCOPE, ZEROSCOPE
from .wan import WAN, WAN_1_3B_PRESET, WAN_14B
from .wan22 import WAN22, WAN22_I2V, WAN22_TI2V
from .wan_i2v import WAN_I2V, WAN_I2V_480P, WAN_I2V_720P, WAN_I2V_FLF2V

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
    WAN_I2V,
    WAN22,
    LTX,
    COGVIDEOX,
    HUNYUANVIDEO,
    SKYREELS_DF,
)}

# every family's variants beside its first: presets SIZE-FAMILY-VARIANT
VARIANTS: tuple[Family, ...] = (
    WAN_1_3B_PRESET,
    WAN_14B,
    WAN_I2V_480P,
    WAN_I2V_720P,
    WAN_I2V_FLF2V,
    WAN22_I2V,
    WAN22_TI2V,
    LTX_2B,
    LTX_13B,
    COGVIDEOX_2B,
    COGVIDEOX_I2V,
    COGVIDEOX_1_5,
    HUNYUANVIDEO_I2V,
    SKYREELS_DF_1_3B,
    DF_14B_540P,
    DF_14B_720P,
)

# a preset's name less its size (`wan`, `wan-14b`) -> the family variant it builds
PRESETS: dict[str, Family] = {family.preset: family for family in (*FAMILIES.values(), *VARIANTS)}
