"""Password hashing (argon2id) and JWTs (python-jose, algorithm pinned)."""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from jose import JWTError, jwt
from pydantic import SecretStr

from app.config import DEV_JWT_SECRET, Settings
from app.errors import Unauthorized

SECRET_FILE = ".jwt-secret"  # under the data dir: development's generated signing secret


def ensure_jwt_secret(settings: Settings) -> None:
    """Development (`make run`): in place of the built-in secret, which anyone can read in the
    source and forge tokens and download links with, use a random one generated on the first start
    and kept under the data dir (0600), so tokens survive restarts. Every other env refuses the
    built-in secret when its settings are built (app/config.py)."""
    j = settings.jwt
    if settings.env != "development" or not j.algorithm.startswith("HS") or \
            j.secret.get_secret_value() != DEV_JWT_SECRET:
        return
    path = settings.data_path / SECRET_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    try:  # O_EXCL: of processes starting at once, one writes and the others read its secret
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        for _ in range(50):  # written right after its creation
            if secret := path.read_text().strip():
                break
            time.sleep(0.1)
    else:
        secret = secrets.token_hex(32)
        with os.fdopen(fd, "w") as f:
            f.write(secret + "\n")
    j.secret = SecretStr(secret)


class Passwords:
    def __init__(self, settings: Settings) -> None:
        a = settings.auth
        self._ph = PasswordHasher(
            time_cost=a.argon2_time_cost, memory_cost=a.argon2_memory_kib, parallelism=a.argon2_parallelism
        )
        # Verified when the username is unknown, so that case costs the same as a wrong password.
        self._dummy = self._ph.hash("dummy-password-for-unknown-users")

    def hash(self, password: str) -> str:
        return self._ph.hash(password)

    def verify(self, password_hash: str | None, password: str) -> bool:
        try:
            return self._ph.verify(password_hash or self._dummy, password) and password_hash is not None
        except (VerificationError, InvalidHashError):
            return False


class Tokens:
    def __init__(self, settings: Settings) -> None:
        j = settings.jwt
        self.algorithm = j.algorithm
        self.issuer, self.audience, self.lifetime = j.issuer, j.audience, j.lifetime_seconds
        if j.algorithm == "RS256":
            assert j.private_key is not None and j.public_key is not None
            self._sign_key: str = j.private_key.get_secret_value()
            self._verify_key: str = j.public_key
        else:
            self._sign_key = self._verify_key = j.secret.get_secret_value()
        # Tokens already verified with this key: token -> (sub, exp). A hit still needs `exp` in the
        # future, and callers still load the user on every request; this only skips re-checking the
        # signature of the exact same string (GET /api/auth/me hot path, bench/api_load.py).
        self._verified: dict[str, tuple[str, int]] = {}

    def issue(self, user_id: str) -> str:
        now = int(time.time())
        claims = {"sub": user_id, "iat": now, "exp": now + self.lifetime, "iss": self.issuer, "aud": self.audience}
        return str(jwt.encode(claims, self._sign_key, algorithm=self.algorithm))

    def subject(self, token: str) -> str:
        hit = self._verified.get(token)
        if hit is not None and time.time() <= hit[1]:
            return hit[0]
        try:
            claims: dict[str, Any] = jwt.decode(
                token, self._verify_key, algorithms=[self.algorithm], audience=self.audience,
                issuer=self.issuer,
                options={"require_exp": True, "require_iat": True, "require_sub": True,
                         "require_iss": True, "require_aud": True},
            )
        except JWTError as e:
            msg = "Token has expired" if "expired" in str(e).lower() else "Invalid token"
            raise Unauthorized(msg, code="token_expired" if "expired" in msg else "invalid_token") from e
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise Unauthorized("Invalid token", code="invalid_token")
        if len(self._verified) >= 10_000:
            self._verified.clear()
        self._verified[token] = (sub, int(claims["exp"]))
        return sub
