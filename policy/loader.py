"""Policy loading: read the YAML file, validate it, and keep the last valid one on reload.

An invalid new version is refused with the exact key and reason, and the policy in force
stays as it was: a typo in an edit must never open or close access by accident.
"""

from __future__ import annotations

import hashlib
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from pydantic import ValidationError

from policy.engine import Policy
from policy.model import PolicyFile

log = logging.getLogger(__name__)
_LOCATED = re.compile(r"^Value error, ([A-Za-z0-9_.\[\]-]+): (.*)$", re.S)


class PolicyError(Exception):
    """A policy document that cannot be used, with where and why."""

    def __init__(self, where: str, reason: str) -> None:
        super().__init__(f"{where}: {reason}")
        self.where = where
        self.reason = reason


def parse(text: str, origin: str = "policy") -> Policy:
    """Validate a policy document; raise ``PolicyError`` naming the first bad key."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{origin}:{mark.line + 1}" if mark is not None else origin
        raise PolicyError(where, f"not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if not isinstance(data, dict):
        raise PolicyError(origin, "the document must be a mapping")
    try:
        document = PolicyFile.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or origin
        reason = "unknown key" if err["type"] == "extra_forbidden" else err["msg"]
        # Whole-document checks name their key at the start of the message ("a.b: why").
        located = _LOCATED.match(reason) if not err["loc"] else None
        if located is not None:
            where, reason = located.group(1), located.group(2)
        raise PolicyError(where, reason) from None
    return Policy(document, hashlib.sha256(text.encode()).hexdigest()[:16])


@dataclass
class PolicySource:
    """A policy file on disk, re-read when it changes."""

    path: Path
    current: Policy
    _stamp: tuple[int, int] = (0, 0)
    last_error: PolicyError | None = field(default=None)
    """Why the newest version on disk was refused, if it was."""

    @classmethod
    def load(cls, path: Path) -> PolicySource:
        """Load the file; the first load must succeed (raise ``PolicyError`` otherwise)."""
        stat = path.stat()
        policy = parse(path.read_text(), str(path))
        return cls(path, policy, (stat.st_mtime_ns, stat.st_size))

    def reload_if_changed(self) -> bool:
        """Re-read the file if it changed; True when a new valid version took effect."""
        try:
            stat = self.path.stat()
        except OSError as exc:
            self.last_error = PolicyError(str(self.path), f"cannot read: {exc.strerror}")
            return False
        stamp = (stat.st_mtime_ns, stat.st_size)
        if stamp == self._stamp:
            return False
        self._stamp = stamp
        try:
            policy = parse(self.path.read_text(), str(self.path))
        except PolicyError as exc:
            self.last_error = exc
            log.warning(
                "policy file refused; the previous version stays in force",
                extra={"where": exc.where, "reason": exc.reason, "revision": self.current.revision},
            )
            return False
        self.current, self.last_error = policy, None
        return True
