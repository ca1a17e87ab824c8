"""Request and response bodies of the HTTP app (:mod:`simsearch.serving.app`), as pydantic models.

They are the endpoint schema that ``/openapi.json`` publishes: a field's
description there is what a client reads.
"""

from __future__ import annotations

from typing import Union

from pydantic import BaseModel, Field

from simsearch.serving.service import MAX_K

_EF_DOC = (
    "search effort: candidate list size of the graph walk, 1 to 2147483647 (at least k is used); "
    "larger is slower and finds more of the true nearest items (default: the index's own ef, saved with it)"
)


class EmbedRequest(BaseModel):
    texts: list[str] = Field(description="texts to embed")
    timeout_ms: float | None = Field(None, gt=0, description="deadline of this request (default: the server's)")


class SearchRequest(BaseModel):
    query: Union[str, list[str], None] = Field(None, description="a query text, or a list of them")
    vector: Union[list[float], list[list[float]], None] = Field(None, description="a query vector, or a list of them")
    k: int = Field(10, ge=1, le=MAX_K, description="results per query")
    ef: int | None = Field(None, description=_EF_DOC)
    timeout_ms: float | None = Field(None, gt=0)


class Listing(BaseModel):
    id: Union[int, str, None] = None
    title: str


class MatchRequest(BaseModel):
    listings: list[Listing]
    k: int = Field(5, ge=1, le=MAX_K)
    threshold: float | None = Field(None, description="least cosine of a match (default: the server's)")
    ef: int | None = Field(None, description=_EF_DOC)
    timeout_ms: float | None = Field(None, gt=0)


class Item(BaseModel):
    id: Union[int, str]
    title: str
    vector: list[float] | None = None


class AddRequest(BaseModel):
    items: list[Item]


class RemoveRequest(BaseModel):
    ids: list[Union[int, str]]


class Envelope(BaseModel):
    model: str
    model_fingerprint: str
    index_version: int


class HitOut(BaseModel):
    id: Union[int, str]
    title: str | None
    score: float
    is_match: bool | None = None


class EmbedResponse(Envelope):
    embeddings: list[list[float | None]]
    missing: list[bool]
    dim: int


class SearchResponse(Envelope):
    results: list[list[HitOut]]


class MatchOut(BaseModel):
    listing_id: Union[int, str, None]
    matches: list[HitOut]


class MatchResponse(Envelope):
    results: list[MatchOut]


class WriteResponse(Envelope):
    added: int | None = None
    removed: int | None = None


class ErrorResponse(BaseModel):
    error: str
