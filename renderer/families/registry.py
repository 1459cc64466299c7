"""Every model family the renderer knows, listed explicitly: a family is one adapter file plus one line here.

The order is the order `render models` lists them in, and the order a checkpoint's pipeline class is matched
in: where two families load the same class (zeroscope and modelscope), a bare checkpoint resolves to the first.
"""
from __future__ import annotations

from .animatediff import ANIMATEDIFF
from .base import Family
from .cross_frame import CONTROLNET_VIDEO, PIX2PIX_VIDEO
from .image_text import I2VGEN_XL, PIA_FAMILY
from .svd import SVD, SVD_XT
from .text2video_zero import T2V_ZERO, T2V_ZERO_SDXL
from .text_to_video_sd import MODELSCOPE, ZEROSCOPE
from .wan import WAN

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
)}
