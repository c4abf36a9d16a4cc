"""A small HTTP client of the SAM service, with timeouts and retries.

:class:`SamClient` implements :class:`~icas_ray.sam_protocol.SamBackend`, so the ``sam``
segmentation method and the labelling client use a remote service exactly like a local model.
It needs only ``requests``, numpy and OpenCV (no torch, no Ray).

Example:
    >>> client = SamClient("http://127.0.0.1:8000", token=None)     # doctest: +SKIP
    >>> image_id = client.register(open("cat.jpg", "rb").read())     # doctest: +SKIP
    >>> client.predict(image_id, points=[[120, 80]], labels=[1])["score"]  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np

from icas_ray.errors import IcasError
from icas_ray.sam._embedding import content_id
from icas_ray.serve._codec import decode_label_png, decode_mask_png

__all__ = ["MULTIPLEX_HEADER", "SamClient", "SamServiceError", "decode_label_png", "decode_mask_png"]

logger = logging.getLogger(__name__)

#: The header Serve routes by: requests about one image go to the replica holding it.
MULTIPLEX_HEADER = "serve_multiplexed_model_id"
_RETRY_STATUS = frozenset({502, 503, 504})


class SamServiceError(IcasError):
    """The service answered with an error (``status`` is the HTTP status) or was unreachable
    (``status`` 0)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def _png_bytes(image: np.ndarray) -> bytes:
    import cv2

    ok, buf = cv2.imencode(".png", cv2.cvtColor(image, cv2.COLOR_RGB2BGR))
    if not ok:  # pragma: no cover
        raise ValueError("cannot PNG-encode the image")
    return buf.tobytes()


class SamClient:
    """Client of the SAM Serve app.

    Args:
        url: base URL, e.g. ``http://127.0.0.1:8000``.
        token: bearer token when the service requires one.
        timeout: seconds per request for prompts; ``encode_timeout`` for registrations and
            automatic masks (the encoder of vit_h on a CPU takes minutes).
        retries: extra attempts on connection errors and 502/503/504, with exponential backoff.
    """

    def __init__(self, url: str = "http://127.0.0.1:8000", *, token: str | None = None,
                 timeout: float = 30.0, encode_timeout: float = 600.0, retries: int = 3,
                 backoff_s: float = 0.5) -> None:
        import requests

        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.encode_timeout = encode_timeout
        self.retries = retries
        self.backoff_s = backoff_s
        self._session = requests.Session()
        self._registered: dict[str, str] = {}

    def close(self) -> None:
        self._session.close()

    def __enter__(self) -> SamClient:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- transport ------------------------------------------------------------------------
    def _request(self, method: str, path: str, *, image_id: str | None = None,
                 timeout: float | None = None, **kwargs: Any) -> Any:
        import requests

        headers = dict(kwargs.pop("headers", {}))
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if image_id:
            headers[MULTIPLEX_HEADER] = image_id
        last: Exception | None = None
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                r = self._session.request(method, self.url + path, headers=headers,
                                          timeout=timeout or self.timeout, **kwargs)
            except (requests.ConnectionError, requests.Timeout) as e:
                last = e
                logger.debug("%s %s failed (%s), attempt %d", method, path, e, attempt + 1)
                continue
            if r.status_code in _RETRY_STATUS and attempt < self.retries:
                last = SamServiceError(r.status_code, r.text[:200])
                continue
            if r.status_code >= 400:
                try:
                    message = r.json().get("error") or r.text
                except ValueError:
                    message = r.text
                raise SamServiceError(r.status_code, f"SAM service {r.status_code}: {message}")
            return r.json()
        raise SamServiceError(0, f"SAM service at {self.url} unreachable after "
                                 f"{self.retries + 1} attempts: {last}")

    # -- the API --------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        return dict(self._request("GET", "/health"))

    def info(self) -> dict[str, Any]:
        return dict(self._request("GET", "/info"))

    def register(self, data: bytes) -> str:
        """Upload image bytes (any format the server decodes); returns the image id."""
        image_id = content_id(data)
        out = self._request("POST", "/images", image_id=image_id, data=data,
                            headers={"Content-Type": "application/octet-stream"},
                            timeout=self.encode_timeout)
        return str(out["id"])

    def register_uri(self, uri: str) -> str:
        """Have the server read the image from ``uri`` (a path it sees, or s3://): only under a
        root its operator allowed with ``--allow-uri`` (else :class:`SamServiceError` 403)."""
        out = self._request("POST", "/images", json={"uri": uri}, timeout=self.encode_timeout)
        return str(out["id"])

    def predict(self, image_id: str, *, points: Any = None, labels: Any = None,
                boxes: Any = None, multimask: bool = False,
                formats: tuple[str, ...] = ("png", "rle")) -> dict[str, Any]:
        """The raw JSON answer of ``POST /images/{id}/predict`` (see docs/serve.md)."""
        body: dict[str, Any] = {"multimask": multimask, "formats": list(formats)}
        if points is not None:
            body["points"] = np.asarray(points, dtype=float).tolist()
        if labels is not None:
            body["labels"] = np.asarray(labels, dtype=int).tolist()
        if boxes is not None:
            body["boxes"] = np.asarray(boxes, dtype=float).reshape(-1, 4).tolist()
        return dict(self._request("POST", f"/images/{image_id}/predict", image_id=image_id,
                                  json=body, timeout=self.encode_timeout))

    def automatic(self, image_id: str, **params: Any) -> dict[str, Any]:
        """The raw JSON answer of ``POST /images/{id}/automatic``."""
        return dict(self._request("POST", f"/images/{image_id}/automatic", image_id=image_id,
                                  json=params, timeout=self.encode_timeout))

    # -- SamBackend -----------------------------------------------------------------------
    def _id_for(self, image: np.ndarray) -> str:
        from icas_ray.sam._embedding import array_id

        key = array_id(image)
        image_id = self._registered.get(key)
        if image_id is None:
            image_id = self.register(_png_bytes(image))
            self._registered[key] = image_id
        return image_id

    def predict_mask(self, image: np.ndarray, *, points: np.ndarray | None = None,
                     point_labels: np.ndarray | None = None, boxes: np.ndarray | None = None,
                     multimask: bool = False) -> np.ndarray:
        """:class:`~icas_ray.sam_protocol.SamBackend`: ``(H, W) bool`` (registers the image once)."""
        out = self.predict(self._id_for(image), points=points, labels=point_labels, boxes=boxes,
                           multimask=multimask, formats=("png",))
        return decode_mask_png(out["mask"]["png"])

    def automatic_labels(self, image: np.ndarray, **params: Any) -> np.ndarray:
        """:class:`~icas_ray.sam_protocol.SamBackend`: ``(H, W) int32`` label map from 1."""
        out = self.automatic(self._id_for(image), formats=[], **params)
        return decode_label_png(out["labels_png"])


