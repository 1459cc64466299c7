"""Model families, one adapter file each. Adding a family is one file and one line here."""
from .animatediff import ANIMATEDIFF
from .base import Defaults, Family, Param
from .svd import SVD, SVD_XT

FAMILIES: dict[str, Family] = {f.name: f for f in (SVD, SVD_XT, ANIMATEDIFF)}

__all__ = ["FAMILIES", "Defaults", "Family", "Param"]
