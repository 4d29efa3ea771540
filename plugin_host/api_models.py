"""The HTTP API's bodies and answers, as pydantic models.

Built from synth's one parameter table, so names, ranges and units cannot
drift; the served OpenAPI document (``/openapi.json``) carries the ranges.
Answers validate what :class:`plugin_host.session.Session` returns (its
shapes are in :mod:`plugin_host.session_shapes`).
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, create_model

from synth.params import NAMES, PARAMS

__all__ = ["Armed", "AudioChoice", "FullParams", "KitList", "KitName", "KitOut", "Learn",
           "MatchOut", "MatchState", "MidiChoice", "PadOut", "PadUpdate", "ParamName", "Params",
           "Picture", "Played", "Preview", "SampleOut", "Saved"]

Params = create_model(
    "Params", __config__=ConfigDict(extra="forbid"),
    __doc__="Some or all of the five parameters, each inside its range.",
    **{s.name: (float | None, Field(None, ge=s.low, le=s.high,
                                    description=f"{s.description} ({s.unit or 'no unit'})"))
       for s in PARAMS})
FullParams = create_model("FullParams", **{s.name: (float, ...) for s in PARAMS})
ParamName = Literal[tuple(NAMES)]


class PadUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    params: Params | None = None
    gain_db: float | None = Field(None, ge=-60.0, le=12.0)
    name: str | None = Field(None, min_length=1, max_length=64)


class PadOut(BaseModel):
    note: int
    name: str
    params: FullParams
    gain_db: float
    has_match: bool
    can_undo: bool


class KitOut(BaseModel):
    name: str
    file: str | None
    pads: list[PadOut]


class MatchOut(BaseModel):
    job: int
    source: str
    theta: FullParams
    nu: list[float]
    units: dict[str, str]
    timings_ms: dict[str, float]
    stage: Literal["fast", "refined"] = Field(
        description="fast: the encoder's estimate; the default match's follows as 'refined'")


class SampleOut(BaseModel):
    pad: PadOut
    match: MatchOut


class Picture(BaseModel):
    wave_min: list[float]
    wave_max: list[float]
    spec: list[list[int]]


class Preview(BaseModel):
    sr: float
    seconds: float
    target: Picture
    match: Picture


class MatchState(BaseModel):
    status: Literal["none", "pending", "scored", "error"]
    job: int | None = None
    source: str | None = None
    message: str | None = None
    theta: FullParams | None = None
    jtfs_distance: float | None = None
    mss_distance: float | None = None
    stage: Literal["fast", "refined"] | None = Field(
        None, description="which stage's parameters are on the pad")
    fast_theta: FullParams | None = Field(None, description="the fast stage's, once refined")
    estimate: str | None = Field(None, description="the refined stage's winning candidate")
    preview: Preview | None = None


class Played(BaseModel):
    played: bool
    reason: str | None


class KitName(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=64,
                      description="letters, digits, spaces, '_', '-', '.'; no folders")


class KitList(BaseModel):
    kits: list[str]
    current: str | None
    folder: str


class Saved(BaseModel):
    name: str
    file: str


class AudioChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    device: str | None = Field(None, max_length=256)


class MidiChoice(BaseModel):
    model_config = ConfigDict(extra="forbid")
    port: str = Field(min_length=1, max_length=256)


class Learn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    param: ParamName
    pad: int | None = Field(None, ge=0, le=127)
    depth: float = Field(0.5, gt=0.0, le=1.0)


class Armed(BaseModel):
    armed: bool
    param: str
    pad: int | None
