"""Building blocks shared by every config section: strict models and repeated checks."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict
from pydantic_core import PydanticCustomError


class Strict(BaseModel):
    # inf/nan are never a meaningful learning rate, scale or weight: refuse them with the key
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


def _crop_scale(value: tuple[float, float]) -> tuple[float, float]:
    lo, hi = value
    if not 0 < lo <= hi <= 1:
        raise ValueError(f"crop_scale must satisfy 0 < lo <= hi <= 1, got {lo, hi}")
    return value


# A RandomResizedCrop area range: both ends are shares of the image.
CropScale = Annotated[tuple[float, float], AfterValidator(_crop_scale)]


def first_repeat(values) -> tuple[bool, object]:
    """(True, the first value that comes again) or (False, None)."""
    seen = set()
    for v in values:
        if v in seen:
            return True, v
        seen.add(v)
    return False, None


def _unique(values: list) -> list:
    repeated, value = first_repeat(values)
    if repeated:  # load.py prints it as "KEY lists VALUE twice"
        raise PydanticCustomError("duplicate", "lists {value} twice", {"value": repr(value)})
    return values


# A list whose entries differ: the same name twice is always a slip (a teacher counted twice in
# the BN mean, two students written into one folder). Use as Annotated[list[str], Unique].
Unique = AfterValidator(_unique)
