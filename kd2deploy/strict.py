"""The base of every pipeline-file section: unknown keys are errors, assignments are validated.

Sections defined next to the code they configure (``export/variants.py``, ``ship/guard.py``) import from here,
and ``config.py`` assembles them into the pipeline schema.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]
Fraction = Annotated[float, Field(ge=0, le=1)]


class Strict(BaseModel):
    """Base for every section: unknown keys are errors, assignments are validated, numbers are finite."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)
