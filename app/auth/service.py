from __future__ import annotations

from sqlalchemy import or_, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from app.auth.models import User
from app.auth.ratelimit import normalise_username
from app.auth.schemas import UserCreate
from app.config import Settings
from app.errors import Conflict, Unauthorized, ValidationFailed
from app.security import Passwords


class AuthService:
    def __init__(self, session: Session, settings: Settings, passwords: Passwords) -> None:
        self.session, self.settings, self.passwords = session, settings, passwords

    def check_password_rules(self, data: UserCreate) -> None:
        n = self.settings.auth.min_password_length
        if len(data.password) < n:
            raise ValidationFailed(f"Password must be at least {n} characters", param="password",
                                   code="password_too_short")
        if data.password.lower() in (data.username.lower(), str(data.email).lower()):
            raise ValidationFailed("Password must not equal the username or email", param="password",
                                   code="password_too_weak")

    def ensure_free(self, data: UserCreate, close: bool = False) -> None:
        taken = self.session.scalar(
            select(User).where(or_(User.username == data.username, User.email == str(data.email).lower()))
        )
        if close:
            self.session.close()
        if taken is not None:
            field = "username" if taken.username == data.username else "email"
            raise Conflict(f"That {field} is already registered", code=f"{field}_taken", param=field)

    def create(self, data: UserCreate, password_hash: str) -> User:
        user = User(username=data.username, email=str(data.email).lower(), password_hash=password_hash,
                    monthly_budget=self.settings.default_monthly_budget)
        self.session.add(user)
        try:
            self.session.commit()
        except IntegrityError as e:
            self.session.rollback()
            raise Conflict("That username or email is already registered", code="username_taken",
                           param="username") from e
        return user

    def find_for_login(self, username: str, close: bool = False) -> User | None:
        user = self.session.scalar(select(User).where(User.username == normalise_username(username)))
        if close:
            self.session.close()
        return user

    @staticmethod
    def login_failed() -> Unauthorized:
        return Unauthorized("Incorrect username or password", code="invalid_credentials")
