"""The endpoint server's side of data capture: what a deploy asks for, and the server's capture slot.

A deploy carries ``{"settings": CaptureSettings, "store_root": <local object store root>}`` (the
endpoint config's DataCaptureConfig, resolved by the local hosting service) or null. The slot keeps
one ``EndpointCapture`` (its writer thread and counts) for the life of the server; a deploy changes
its settings, or turns capture off, without losing what is queued.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlops_dagster.monitoring.capture import CaptureSettings, EndpointCapture

FLUSH_SECONDS = 1.0  # the writer writes what it holds at least this often
CLOSE_SECONDS = 8.0  # how long a flush or a clean stop waits for the writes (process.py waits 10 s)

log = logging.getLogger("mlops_dagster.serving")


@dataclass(frozen=True)
class CaptureSpec:
    """A deploy's data capture: what to capture (CaptureSettings) into which local object store."""

    settings: CaptureSettings
    store_root: str

    @classmethod
    def from_json(cls, data: Any) -> CaptureSpec | None:
        if data is None:
            return None
        if not isinstance(data, dict) or not isinstance(data.get("settings"), dict):
            raise ValueError('"capture" must be null or {"settings": {...}, "store_root": "/absolute/dir"}')
        root = data.get("store_root")
        if not isinstance(root, str) or not Path(root).is_absolute():
            raise ValueError('"capture.store_root" must be the absolute path of the local object store')
        try:
            settings = CaptureSettings.from_dict(data["settings"])
        except TypeError as exc:
            raise ValueError(f'"capture.settings" is not a capture configuration ({exc})') from None
        return cls(settings, root)


class ServerCapture:
    """The server's capture: None until a deploy asks for it, then one EndpointCapture."""

    def __init__(self) -> None:
        self.capture: EndpointCapture | None = None
        self.root: str | None = None
        self.errors = 0  # captures that raised (a bug, not a store failure): counted, never the request's

    def configure(self, spec: CaptureSpec | None) -> None:
        """Capture as the deployed config says (None: stop capturing; the writer stays, idle)."""
        if spec is None:
            if self.capture is not None:
                self.capture.settings = None
            return
        from mlops_dagster.objects import LocalObjects  # not the Dagster resource: a second to import

        if self.capture is None or self.root != spec.store_root:
            previous = self.capture
            self.capture = EndpointCapture(LocalObjects(spec.store_root), flush_seconds=FLUSH_SECONDS)
            self.root = spec.store_root
            if previous is not None:
                previous.close(CLOSE_SECONDS)
        self.capture.settings = spec.settings
        log.info("capturing %d%% of requests to %s", spec.settings.sampling_percentage, spec.settings.prefix)

    def request(
        self, body: bytes, request_type: str, response_body: bytes, response_type: str, inference_id: str | None
    ) -> None:
        """Hand a served request to capture; whatever happens there is not the request's business."""
        capture = self.capture
        if capture is None or capture.settings is None:
            return
        try:
            capture.capture(body, request_type, response_body, response_type, inference_id)
        except Exception:  # a bug in building the record: logged and counted, the answer still goes out
            self.errors += 1
            log.exception("capturing a request failed")

    def status(self) -> dict | None:
        """The counts (see monitoring.capture.CaptureCounts) and settings; None before any capture."""
        if self.capture is None:
            return None
        return {**self.capture.status(), "errors": self.errors}

    def flush(self) -> bool:
        return self.capture is None or self.capture.flush(CLOSE_SECONDS)

    def close(self) -> None:
        if self.capture is not None and not self.capture.close(CLOSE_SECONDS):
            log.error("capture: the last write did not finish within %.0f s", CLOSE_SECONDS)
