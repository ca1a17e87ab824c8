"""The labelling page of the review loop: a local web app over a dedup state (``simsearch review serve``).

The page shows the pairs :meth:`~simsearch.Deduplicator.review_pairs` chose,
two records side by side with the words that differ highlighted, and takes a
label per pair from the keyboard (``m`` match, ``n`` not a match, ``s`` skip,
arrows to move). Every label is saved the moment it is given
(:class:`~simsearch.report.labels.LabelStore`: an atomic rewrite of one JSON
file in the state folder), so closing the browser loses nothing and a
restart resumes at the first pair without a label. **Recalibrate** runs
:meth:`~simsearch.Deduplicator.calibrate` on the labels, saves the new
threshold into the state (as ``simsearch review import`` does) and shows it
with its precision and recall and their intervals. **Export** downloads the
labels as the CSV ``simsearch review import`` reads.

The server binds ``127.0.0.1`` unless told otherwise; any other address
needs a token, which every request must then carry (``?token=`` on the page's
address, or the ``X-Review-Token`` header).

Endpoints: ``GET /`` (the page), ``GET /api/state``, ``POST /api/label``
(``{"pair": i, "label": "match" | "no_match" | "skip", "labeller": name}``),
``POST /api/recalibrate``, ``GET /api/export.csv``. Errors are JSON
``{"error": "one line"}`` with status 400 (401 for a missing or wrong token).
"""

from __future__ import annotations

import hmac
import io
import os
from pathlib import Path
from typing import Any

import pyarrow.csv as pcsv

from simsearch import _storage
from simsearch.applications import Deduplicator
from simsearch.applications.incremental.state import load_state
from simsearch.errors import SimsearchError

try:
    from fastapi import FastAPI, Request
    from fastapi.responses import HTMLResponse, JSONResponse, Response
    from starlette.concurrency import run_in_threadpool
except ImportError as err:  # pragma: no cover - depends on the environment
    raise ImportError(f"the review page needs {err.name}; install it with: pip install 'simsearch[serve]'") from err

from simsearch.report.html import render_page
from simsearch.report.labels import LabelStore, default_labels_path

__all__ = ["LOCAL_HOSTS", "ReviewSession", "check_binding", "create_app", "serve_review"]

#: Addresses that need no token.
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})
TOKEN_HEADER = "X-Review-Token"


def check_binding(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token.

    Raises
    ------
    ValueError
        ``host`` is not a loopback address and ``token`` is empty.
    """
    if host not in LOCAL_HOSTS and not token:
        raise ValueError(
            f"binding {host} lets other machines read and change the labels: pass --token SECRET, or bind 127.0.0.1"
        )


class ReviewSession:
    """A dedup state and the labels file of its review page.

    Opening one checks everything before anything is written: the state
    loads (:meth:`~simsearch.Deduplicator.load`: its format version and
    checksums), it has candidate pairs, and an existing labels file was drawn
    from a state of the same model and names only ids the state holds.

    Parameters
    ----------
    state : path-like
        The dedup state folder.
    labels_path : path-like, optional
        The labels file; default ``STATE/review/labels.json``.
    n : int, default 200
        Pairs drawn for a new review.
    seed : int, default 0
    target_precision : float, optional
        Recalibrate to the lowest threshold reaching this precision instead of
        maximum F1.

    Raises
    ------
    FileNotFoundError
        No state at ``state``.
    ValueError
        A damaged or newer state; a state with no item or no candidate pair;
        a labels file of another model, of a newer layout, or with pair ids
        not in the state (:class:`~simsearch.errors.UnknownIdError`, a
        ``KeyError``).
    """

    def __init__(
        self,
        state: str | os.PathLike[str],
        *,
        labels_path: str | os.PathLike[str] | None = None,
        n: int = 200,
        seed: int = 0,
        target_precision: float | None = None,
    ) -> None:
        self.state = Path(state)
        if not self.state.is_dir():
            raise FileNotFoundError(
                f"no dedup state at {str(self.state)!r} (make one with: simsearch dedup ITEMS --state DIR)"
            )
        self.target_precision = target_precision
        dedup = Deduplicator.load(self.state)
        if dedup.n_items_ == 0:
            raise ValueError(f"the dedup state {str(self.state)!r} holds no items: there is nothing to review")
        self.store = LabelStore(labels_path if labels_path is not None else default_labels_path(self.state))
        live = {str(v) for v in dedup.groups_.column("id").to_pylist()}

        def draw() -> Any:
            try:
                return dedup.review_pairs(n, seed=seed)
            except ValueError as err:
                raise ValueError(f"the dedup state {str(self.state)!r} has nothing to review: {err}") from err

        self.store.create_or_check(state_identity(self.state), draw, live)
        self._threshold = dedup.threshold_
        self._calibration = None if dedup.calibration_ is None else dedup.calibration_.to_dict()

    def snapshot(self) -> dict[str, Any]:
        """What the page shows: the pairs, every label, the threshold in use and the last calibration."""
        body = self.store.read()
        return {
            "state": self.state.resolve().name,
            "pairs": body["pairs"],
            "labels": body["labels"],
            "threshold": self._threshold,
            "calibration": self._calibration,
        }

    def label(self, pair: int, label: str, labeller: str) -> dict[str, Any]:
        """Save one label (see :meth:`LabelStore.put`); returns the pair's entry."""
        return self.store.put(pair, label, labeller)

    def recalibrate(self) -> dict[str, Any]:
        """Recalibrate the state's threshold on the labels given so far and save it into the state.

        Returns
        -------
        dict
            :meth:`~simsearch.applications.ThresholdChoice.to_dict` of the new
            choice (threshold, previous threshold, precision, recall, their
            intervals and confidence, labels used).

        Raises
        ------
        ValueError
            No label yet, no pair labelled a match, or an unreachable target
            precision; the state is unchanged.
        """
        table = self.store.labels_table()
        labelled = sum(v is not None for v in table.column("label").to_pylist())
        if labelled == 0:
            raise ValueError("no pair is labelled yet: label some pairs (m, n) before recalibrating")
        with _storage.exclusive_lock(self.store.path.parent):
            dedup = Deduplicator.load(self.state)  # the state as it is now, not as it was at start
            try:
                choice = dedup.calibrate(table, target_precision=self.target_precision)
            except ValueError as err:
                raise ValueError(f"cannot recalibrate on these {labelled} labels: {err}") from err
            dedup.save(self.state)
        self._threshold = choice.threshold
        self._calibration = choice.to_dict()
        return self._calibration

    def export_csv(self) -> bytes:
        """The labels as the CSV ``simsearch review import`` reads."""
        buf = io.BytesIO()
        pcsv.write_csv(self.store.labels_table(), buf)
        return buf.getvalue()


def state_identity(state: str | os.PathLike[str]) -> dict[str, Any]:
    """What a labels file records of its state: the kind of items and the encoder's name and fingerprint."""
    header = load_state(state).header
    encoder = header.get("encoder") or {}
    return {
        "items_kind": header.get("items_kind"),
        "model": encoder.get("name"),
        "model_fingerprint": encoder.get("fingerprint"),
    }


def create_app(session: ReviewSession, *, token: str | None = None) -> FastAPI:
    """The FastAPI app of a review page.

    Parameters
    ----------
    session : ReviewSession
    token : str, optional
        When set, every request must carry it (``?token=`` or the
        ``X-Review-Token`` header); others get 401.

    Returns
    -------
    fastapi.FastAPI
    """
    app = FastAPI(title="simsearch review", docs_url=None, redoc_url=None, openapi_url=None)
    page = render_page(
        "review.html",
        f"simsearch review: {session.state.resolve().name}",
        {"token": bool(token)},
        ("common.js", "review.js"),
    )

    @app.middleware("http")
    async def require_token(request: Request, call_next: Any) -> Any:
        if token:
            given = request.headers.get(TOKEN_HEADER) or request.query_params.get("token") or ""
            if not hmac.compare_digest(given.encode(), token.encode()):
                return JSONResponse(
                    {"error": "missing or wrong token: open the address the server printed"}, status_code=401
                )
        return await call_next(request)

    @app.exception_handler(SimsearchError)
    @app.exception_handler(ValueError)
    @app.exception_handler(KeyError)
    async def user_error(request: Request, err: Exception) -> Any:
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        return JSONResponse({"error": message}, status_code=400)

    @app.get("/", response_class=HTMLResponse)
    def index() -> Any:
        return HTMLResponse(page)

    @app.get("/api/state")
    def state() -> Any:
        return session.snapshot()

    @app.post("/api/label")
    async def label(request: Request) -> Any:
        try:
            body = await request.json()
        except ValueError:
            raise ValueError('the body must be JSON: {"pair": i, "label": "match" | "no_match" | "skip"}') from None
        if not isinstance(body, dict):
            raise ValueError("the body must be a JSON object")
        return await run_in_threadpool(session.label, body.get("pair"), body.get("label"), body.get("labeller", ""))

    @app.post("/api/recalibrate")
    def recalibrate() -> Any:
        return session.recalibrate()

    @app.get("/api/export.csv")
    def export() -> Any:
        return Response(
            session.export_csv(),
            media_type="text/csv",
            headers={"Content-Disposition": f'attachment; filename="{session.state.resolve().name}-labels.csv"'},
        )

    return app


def serve_review(
    state: str | os.PathLike[str],
    *,
    host: str = "127.0.0.1",
    port: int = 8766,
    token: str | None = None,
    log_level: str = "warning",
    on_ready: Any = None,
    **session_kwargs: Any,
) -> None:
    """Serve the review page of a state until interrupted (what ``simsearch review serve`` runs).

    Parameters
    ----------
    state : path-like
        The dedup state folder.
    host, port : str, int
        Where to listen; a host other than the loopback needs ``token``.
    token : str, optional
    log_level : str, default "warning"
        uvicorn's log level.
    on_ready : callable, optional
        Called with the page's address once the state is checked, before listening.
    **session_kwargs
        Passed to :class:`ReviewSession` (``labels_path``, ``n``, ``seed``,
        ``target_precision``).

    Raises
    ------
    ValueError, FileNotFoundError
        See :func:`check_binding` and :class:`ReviewSession`; raised before
        listening, with nothing written.
    """
    check_binding(host, token)
    session = ReviewSession(state, **session_kwargs)
    app = create_app(session, token=token)
    import uvicorn

    if on_ready is not None:
        shown = f"[{host}]" if ":" in host else host
        on_ready(f"http://{shown}:{port}/" + (f"?token={token}" if token else ""))
    uvicorn.run(app, host=host, port=port, log_level=log_level, access_log=False)
