"""Building blocks shared by every config section: strict models and repeated checks."""

from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict


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
