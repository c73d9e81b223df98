"""Credentials: which cameras may connect (camera tokens) and who may operate (operator tokens, certificates).

Cameras, from ``--cameras-file`` and/or ``--camera ID=TOKEN`` flags::

    {"cameras": {
        "cam-north": {"token": "s3cret", "config": {"base_rate": 0.4}},
        "cam-south": {"token_sha256": "<hex sha256 of the token>"}
    }}

``config`` (optional) holds the camera's initial coding settings (see :mod:`icmh.service.edge_config`).

Operators, from ``--operators-file`` and/or ``--operator NAME=TOKEN:ROLE`` flags (a map by name, or a list of
objects with ``name``)::

    {"operators": {
        "alice": {"token_sha256": "<hex sha256>", "role": "inspector", "cameras": ["cam-north"]},
        "wall": {"token": "s3cret-too", "role": "viewer"},
        "ops-console": {"cert_names": ["ops-console.example.net"], "role": "admin"}
    }}

Roles: ``viewer`` < ``inspector`` < ``admin``; ``cameras`` (optional) limits an operator to those cameras;
``cert_names`` are client-certificate names (CN or SAN) that identify the operator under mutual TLS. Tokens are
kept and compared as SHA-256 digests in constant time. Camera and operator credentials are kept apart: an
operator may not reuse a camera's token nor be named by a camera's certificate name.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import grpc

from icmh.service.edge_config import validate_config


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


def _read_json(path: Path, key: str) -> Any:
    try:
        return json.loads(Path(path).read_text())[key]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ValueError(f"cannot read {key} from {path}: {exc}") from None


def _token_digest(spec: dict[str, Any], what: str) -> bytes | None:
    """SHA-256 of ``spec["token"]``, or ``spec["token_sha256"]`` checked; None when neither is given."""
    if "token" in spec:
        if not isinstance(spec["token"], str) or not spec["token"]:
            raise ValueError(f"{what}: 'token' must be a non-empty string")
        return _sha256(spec["token"])
    if "token_sha256" not in spec:
        return None
    try:
        digest = bytes.fromhex(spec["token_sha256"])
    except (ValueError, TypeError):
        raise ValueError(f"{what}: token_sha256 is not hex") from None
    if len(digest) != 32:
        raise ValueError(f"{what}: token_sha256 must be 64 hex digits")
    return digest


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
        cameras = _read_json(path, "cameras")
        if not isinstance(cameras, dict):
            raise ValueError(f"{path}: 'cameras' must map camera ids to settings")
        entries = []
        for camera_id, spec in cameras.items():
            what = f"{path}: camera {camera_id!r}"
            if not isinstance(spec, dict):
                raise ValueError(f"{what} needs an object with 'token' or 'token_sha256'")
            digest = _token_digest(spec, what)
            if digest is None:
                raise ValueError(f"{what} has neither 'token' nor 'token_sha256'")
            try:
                config = validate_config(spec.get("config", {}))
            except ValueError as exc:
                raise ValueError(f"{what}: {exc}") from None
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

    def token_owners(self) -> dict[bytes, str]:
        """Camera id by token digest (to keep operator credentials apart from camera ones)."""
        return {e.token_sha256: e.camera_id for e in self._entries.values()}


class Role(IntEnum):
    """What an operator may do; each role includes the ones below it."""

    VIEWER = 1  # camera and frame lists, machine-quality frames, detections
    INSPECTOR = 2  # + human-quality and original frames
    ADMIN = 3  # + camera configuration, the audit log

    @property
    def label(self) -> str:
        return self.name.lower()

    @classmethod
    def parse(cls, text: object) -> Role:
        try:
            return cls[str(text).upper()]
        except KeyError:
            raise ValueError(f"unknown role {text!r} (viewer, inspector or admin)") from None


@dataclass(frozen=True)
class Identity:
    """An authenticated caller of the operator-facing services."""

    name: str  # operator name; "" for open access
    role: Role
    via: str  # "token", "certificate" or "open"
    cameras: frozenset[str] | None = None  # None: every camera

    def may_see(self, camera_id: str) -> bool:
        return self.cameras is None or camera_id in self.cameras

    def describe(self) -> str:
        return f"operator {self.name!r}" if self.name else "open access"


OPEN_ACCESS = Identity("", Role.ADMIN, "open")
MAX_NAME_CHARS = 64


@dataclass(frozen=True)
class OperatorEntry:
    name: str
    role: Role
    token_sha256: bytes | None = None
    cert_names: frozenset[str] = frozenset()
    cameras: frozenset[str] | None = None  # None: every camera

    def identity(self, via: str) -> Identity:
        return Identity(self.name, self.role, via, self.cameras)


def _check_name(name: object, what: str) -> str:
    if not isinstance(name, str) or not 1 <= len(name) <= MAX_NAME_CHARS or not name.isprintable():
        raise ValueError(f"{what}: an operator name must be 1..{MAX_NAME_CHARS} printable characters")
    return name


def _string_set(value: object, what: str) -> frozenset[str]:
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise ValueError(f"{what} must be a list of non-empty strings")
    return frozenset(value)


class OperatorRegistry:
    """Operators by token digest and by client-certificate name (may be empty: nobody gets in)."""

    def __init__(self, entries: Iterable[OperatorEntry] = ()) -> None:
        self._entries = {e.name: e for e in entries}
        digests = [e.token_sha256 for e in self._entries.values() if e.token_sha256 is not None]
        if len(set(digests)) != len(digests):
            raise ValueError("two operators share one token: give each operator its own")
        certs = [n for e in self._entries.values() for n in e.cert_names]
        if len(set(certs)) != len(certs):
            raise ValueError("two operators share one certificate name")

    @classmethod
    def load(cls, config_file: Path | None = None, flags: Iterable[str] = ()) -> OperatorRegistry:
        """Operators of ``config_file`` plus ``NAME=TOKEN:ROLE`` flags (a flag replaces the file's entry)."""
        entries = {e.name: e for e in (cls._from_file(config_file) if config_file else [])}
        for flag in flags:
            name, sep, rest = flag.partition("=")
            token, colon, role = rest.rpartition(":")
            if not sep or not colon or not token:
                raise ValueError(f"--operator expects NAME=TOKEN:ROLE, got {flag.split('=')[0]!r}=...")
            entries[name] = OperatorEntry(_check_name(name, "--operator"), Role.parse(role), _sha256(token))
        return cls(entries.values())

    @staticmethod
    def _from_file(path: Path) -> list[OperatorEntry]:
        operators = _read_json(path, "operators")
        if isinstance(operators, dict):
            items = list(operators.items())
        elif isinstance(operators, list) and all(isinstance(o, dict) for o in operators):
            items = [(o.get("name"), o) for o in operators]
        else:
            raise ValueError(f"{path}: 'operators' must map names to settings or list objects with a 'name'")
        entries = []
        for name, spec in items:
            what = f"{path}: operator {name!r}"
            if not isinstance(spec, dict):
                raise ValueError(f"{what} needs an object with 'role' and 'token', 'token_sha256' or 'cert_names'")
            _check_name(name, what)
            certs = _string_set(spec["cert_names"], f"{what}: cert_names") if "cert_names" in spec else frozenset()
            digest = _token_digest(spec, what)
            if digest is None and not certs:
                raise ValueError(f"{what} has no credential: give 'token', 'token_sha256' or 'cert_names'")
            if "role" not in spec:
                raise ValueError(f"{what} has no 'role' (viewer, inspector or admin)")
            cameras = _string_set(spec["cameras"], f"{what}: cameras") if "cameras" in spec else None
            if cameras is not None and not cameras:
                raise ValueError(f"{what}: 'cameras' lists no camera (leave it out for every camera)")
            entries.append(OperatorEntry(name, Role.parse(spec["role"]), digest, certs, cameras))
        return entries

    def check_separation(self, cameras: CameraRegistry) -> None:
        """ValueError when an operator reuses a camera's token or is named by a camera id (its certificate)."""
        camera_digests = cameras.token_owners()
        for entry in self._entries.values():
            if entry.token_sha256 is not None and entry.token_sha256 in camera_digests:
                raise ValueError(f"operator {entry.name!r} uses the token of camera "
                                 f"{camera_digests[entry.token_sha256]!r}: camera tokens are not operator credentials")
            shared = entry.cert_names & set(cameras.ids())
            if shared:
                raise ValueError(f"operator {entry.name!r}: certificate name {sorted(shared)[0]!r} is a camera id; "
                                 "camera certificates are not operator credentials")

    def by_token(self, token: str) -> Identity | None:
        """The operator holding ``token`` (every digest is compared, in constant time each)."""
        digest = _sha256(token)
        found = None
        for entry in self._entries.values():
            if entry.token_sha256 is not None and hmac.compare_digest(digest, entry.token_sha256):
                found = entry
        return found.identity("token") if found else None

    def by_certificate(self, names: Iterable[str]) -> Identity | None:
        """The operator named by one of a verified client certificate's names (CN, SAN)."""
        wanted = set(names)
        for entry in self._entries.values():
            if entry.cert_names & wanted:
                return entry.identity("certificate")
        return None

    @property
    def uses_certificates(self) -> bool:
        return any(e.cert_names for e in self._entries.values())

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __len__(self) -> int:
        return len(self._entries)
