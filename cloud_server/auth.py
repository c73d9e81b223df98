"""Which cameras may connect, and with which token (from a JSON file and/or ``--camera ID=TOKEN`` flags).

File format::

    {"cameras": {
        "cam-north": {"token": "s3cret", "config": {"base_rate": 0.4}},
        "cam-south": {"token_sha256": "<hex sha256 of the token>"}
    }}

``config`` (optional) holds the camera's initial coding settings (see
:mod:`shared.service.edge_config`). Tokens are compared as SHA-256 digests in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from dataclasses import dataclass, field
from pathlib import Path

import grpc

from shared.service.edge_config import validate_config


class AuthError(Exception):
    """A connection is refused; ``code`` is the gRPC status to end the call with."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class CameraEntry:
    camera_id: str
    token_sha256: bytes
    config: dict[str, float] = field(default_factory=dict)


def _sha256(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class CameraRegistry:
    def __init__(self, entries: list[CameraEntry]) -> None:
        self._entries = {e.camera_id: e for e in entries}

    @classmethod
    def load(cls, config_file: Path | None = None, flags: list[str] | None = None) -> CameraRegistry:
        """Cameras of ``config_file`` plus ``ID=TOKEN`` flags (a flag overrides the file's token)."""
        entries = {e.camera_id: e for e in (cls._from_file(config_file) if config_file else [])}
        for flag in flags or []:
            camera_id, sep, token = flag.partition("=")
            if not sep or not camera_id or not token:
                raise ValueError(f"--camera expects ID=TOKEN, got {flag!r}")
            old = entries.get(camera_id)
            entries[camera_id] = CameraEntry(camera_id, _sha256(token), old.config if old else {})
        if not entries:
            raise ValueError("no camera configured: give --cameras-file or --camera ID=TOKEN")
        return cls(list(entries.values()))

    @staticmethod
    def _from_file(path: Path) -> list[CameraEntry]:
        try:
            cameras = json.loads(Path(path).read_text())["cameras"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"cannot read cameras from {path}: {exc}") from None
        if not isinstance(cameras, dict):
            raise ValueError(f"{path}: 'cameras' must map camera ids to settings")
        entries = []
        for camera_id, spec in cameras.items():
            if not isinstance(spec, dict):
                raise ValueError(f"{path}: camera {camera_id!r} needs an object with 'token' or 'token_sha256'")
            if "token" in spec:
                digest = _sha256(str(spec["token"]))
            elif "token_sha256" in spec:
                try:
                    digest = bytes.fromhex(spec["token_sha256"])
                except ValueError:
                    raise ValueError(f"{path}: camera {camera_id!r}: token_sha256 is not hex") from None
                if len(digest) != 32:
                    raise ValueError(f"{path}: camera {camera_id!r}: token_sha256 must be 64 hex digits")
            else:
                raise ValueError(f"{path}: camera {camera_id!r} has neither 'token' nor 'token_sha256'")
            try:
                config = validate_config(spec.get("config", {}))
            except ValueError as exc:
                raise ValueError(f"{path}: camera {camera_id!r}: {exc}") from None
            entries.append(CameraEntry(camera_id, digest, config))
        return entries

    def authenticate(self, camera_id: str, token: str) -> CameraEntry:
        """The camera's entry; AuthError PERMISSION_DENIED (unknown camera) or UNAUTHENTICATED (bad token)."""
        entry = self._entries.get(camera_id)
        if entry is None:
            raise AuthError(grpc.StatusCode.PERMISSION_DENIED, f"camera {camera_id!r} is not registered")
        if not token or not hmac.compare_digest(_sha256(token), entry.token_sha256):
            raise AuthError(grpc.StatusCode.UNAUTHENTICATED, f"wrong or missing token for camera {camera_id!r}")
        return entry

    def get(self, camera_id: str) -> CameraEntry | None:
        return self._entries.get(camera_id)

    def ids(self) -> list[str]:
        return sorted(self._entries)
