"""Register, log in, log out, verify the e-mail address, reset a password, "my orders".

Passwords are hashed with argon2id. Log-in and registration are throttled per
client IP; failed passwords are also counted per account (see ratelimit). Guest orders placed with an address join the
account once its owner clicks the verification link sent to that address:
without that proof, anyone could register a buyer's address and take over
their downloads.

Password reset: the link carries a signed, expiring token bound to the
account's current password hash, so it stops working once used (the hash
changes) or when the password changes otherwise. The request page answers the
same whether or not the address has an account, and is throttled per IP and
per address. Following a reset link proves the address, so it also verifies it.

Sessions are bound to the password too: a logged-in session holds a digest of
the password hash it logged in with, checked against the account on each
request that asks who is logged in. So a password reset (or any other change
of the hash) logs out every other session of the account, e.g. the one a
thief opened with the old password; the session that reset it is logged in
anew with the new hash.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import logging
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, TypeVar
from urllib.parse import urlsplit

import psycopg2
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from email_validator import EmailNotValidError, validate_email
from flask import (
    Blueprint,
    abort,
    current_app,
    flash,
    g,
    redirect,
    render_template,
    request,
    session,
    url_for,
)
from itsdangerous import BadSignature, SignatureExpired
from werkzeug.wrappers import Response

from ..db import get_db
from . import fulfilment, grants, orders, outbox, ratelimit, sessions, signing, users

log = logging.getLogger(__name__)
bp = Blueprint("accounts", __name__, url_prefix="/account")

MIN_PASSWORD = 10
MAX_PASSWORD = 1024
VERIFY_SALT = "paydrop.verify-email"
VERIFY_MAX_AGE = 3 * 24 * 3600
RESET_SALT = "paydrop.password-reset"
RESET_SENT = ("If an account exists for that address, we sent it a link to choose a new "
              "password. The link works for one hour, once.")

_hasher = PasswordHasher()
# Verified against when the account does not exist, so a wrong address takes as
# long as a wrong password.
_DUMMY_HASH = _hasher.hash("paydrop-timing-equaliser")

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True)
class CurrentUser:
    id: int
    email: str


def normalise_email(value: object) -> str | None:
    """The normalised, lower-cased address, or None when it is not a valid address.

    email-validator checks the syntax (RFC 5322 as mail servers accept it,
    internationalised domains, special-use domains such as .test refused); no
    DNS look-up happens, so a page never waits on a resolver.
    """
    if not isinstance(value, str) or len(value) > 320:
        return None
    try:
        checked = validate_email(value.strip(), check_deliverability=False)
    except EmailNotValidError:
        return None
    email = checked.normalized.lower()
    return email if len(email) <= 254 else None


def current_user() -> CurrentUser | None:
    """Who is logged in, checked once per request against the account's password."""
    if "user" not in g:
        g.user = _session_user()
    user: CurrentUser | None = g.user
    return user


def _session_user() -> CurrentUser | None:
    user_id, email = session.get("user_id"), session.get("user_email")
    if not user_id or not email:
        return None
    try:
        with get_db().transaction() as cur:
            user = users.get(cur, user_id)
    except psycopg2.Error as exc:
        # Not logged in for this request (fail closed), but not logged out
        # either: an error page still renders while the database is away.
        log.warning("could not check the session of user %s: %s", user_id, exc)
        return None
    if user is None or not hmac.compare_digest(str(session.get("password")),
                                               _session_fingerprint(user)):
        # The password changed since this session logged in (or the account
        # is gone): log it out, keeping nothing of the old identity.
        log.info("session of user %s ended: password changed since it logged in", user_id)
        session.clear()
        sessions.rotate()
        return None
    return CurrentUser(user.id, user.email)


def login_required(view: F) -> F:
    @functools.wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if current_user() is None:
            return redirect(url_for("accounts.login", next=request.full_path.rstrip("?")))
        return view(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _safe_next(target: str | None) -> str:
    """``target`` if it is a path on this site, else "my orders".

    Browsers strip tabs and newlines from URLs and treat a backslash like a
    slash, so "/<TAB>/evil.example" or "/<BACKSLASH>evil" would leave the site: refuse any
    control character, whitespace or backslash, anything that parses with a
    scheme or a host, and anything not starting with exactly one "/".
    """
    fallback = url_for("accounts.my_orders")
    if not target or not target.startswith("/") or target.startswith("//"):
        return fallback
    if "\\" in target or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in target):
        return fallback
    parts = urlsplit(target)
    if parts.scheme or parts.netloc:
        return fallback
    return target


def _log_in(user: users.User) -> None:
    orders_seen = session.get("orders", [])
    session.clear()
    sessions.rotate()
    session["user_id"] = user.id
    session["user_email"] = user.email
    session["password"] = _session_fingerprint(user)
    session["orders"] = orders_seen
    session.permanent = True
    g.user = CurrentUser(user.id, user.email)


def _verification_link(user: users.User) -> str:
    token = signing.timed_serializer(VERIFY_SALT).dumps(
        {"user": user.id, "email": user.email}
    )
    base = current_app.config["PUBLIC_URL"].rstrip("/")
    return f"{base}{url_for('accounts.verify', token=token)}"


def _queue_verification(cur: Any, user: users.User) -> int:
    return outbox.enqueue(
        cur,
        user.email,
        "Confirm your e-mail address",
        "Confirm this address to see purchases made with it in 'My orders':\n\n"
        f"{_verification_link(user)}\n\nThe link works for three days. "
        "If you did not create an account, ignore this message.\n",
    )


@bp.route("/register", methods=["GET", "POST"])
def register() -> Response | str | tuple[str, int]:
    if request.method == "GET":
        return render_template("accounts/register.html")
    email = normalise_email(request.form.get("email"))
    password = request.form.get("password", "")
    ratelimit.hit("login", ("ip", ratelimit.client_ip()))
    errors = []
    if email is None:
        errors.append("Enter a valid e-mail address.")
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        errors.append(f"Choose a password of at least {MIN_PASSWORD} characters.")
    elif password != request.form.get("password_confirm", ""):
        errors.append("The two passwords do not match.")
    if errors or email is None:
        return render_template("accounts/register.html", errors=errors, email=email or ""), 400
    with get_db().transaction() as cur:
        user = users.create(cur, email, _hasher.hash(password),
                            replace_unverified_after=current_app.config[
                                "UNVERIFIED_ACCOUNT_TTL_SECONDS"])
        mail_id = _queue_verification(cur, user) if user else None
    if user is None:
        return render_template(
            "accounts/register.html",
            errors=["An account with this address exists. Log in instead."],
            email=email,
        ), 400
    outbox.kick([mail_id] if mail_id else [])
    _log_in(user)
    flash("Welcome! We sent you a link to confirm your address; purchases made with it "
          "as a guest appear here once you follow it.")
    return redirect(url_for("accounts.my_orders"))


@bp.route("/login", methods=["GET", "POST"])
def login() -> Response | str | tuple[str, int]:
    if request.method == "GET":
        return render_template("accounts/login.html", next=request.args.get("next", ""))
    email = normalise_email(request.form.get("email"))
    password = request.form.get("password", "")
    # The IP first: a throttled client's attempts never reach the account's count.
    ratelimit.hit("login", ("ip", ratelimit.client_ip()))
    if email:
        ratelimit.check("login-failures", ("account", email))
    user = None
    if email and len(password) <= MAX_PASSWORD:
        with get_db().transaction() as cur:
            user = users.get_by_email(cur, email)
            if not _password_matches(user, password):
                user = None
            elif user is not None and _hasher.check_needs_rehash(user.password_hash):
                user = replace(user, password_hash=_hasher.hash(password))
                users.set_password_hash(cur, user.id, user.password_hash)
    if user is None:
        if email:
            ratelimit.hit("login-failures", ("account", email))
        return render_template(
            "accounts/login.html",
            errors=["The e-mail address or password is not right."],
            email=email or "",
            next=request.form.get("next", ""),
        ), 401
    _log_in(user)
    return redirect(_safe_next(request.form.get("next")))


def _password_matches(user: users.User | None, password: str) -> bool:
    try:
        return _hasher.verify(user.password_hash if user else _DUMMY_HASH, password) and bool(user)
    except (VerificationError, InvalidHashError):
        return False


@bp.post("/logout")
def logout() -> Response:
    session.clear()
    sessions.rotate()
    g.user = None
    return redirect(url_for("catalog.index"))


@bp.get("/verify/<token>")
def verify(token: str) -> Response | tuple[str, int]:
    serializer = signing.timed_serializer(VERIFY_SALT)
    try:
        claim = serializer.loads(token, max_age=VERIFY_MAX_AGE)
    except SignatureExpired:
        return render_template("error.html", code=410, title="Link expired",
                               message="This confirmation link has expired. Log in and "
                                       "ask for a new one on 'My orders'."), 410
    except BadSignature:
        abort(404)
    with get_db().transaction() as cur:
        if not users.mark_email_verified(cur, claim["user"], claim["email"]):
            abort(404)
        attached = orders.attach_guest_orders(cur, claim["email"], claim["user"])
    log.info("user %s verified their address; %d guest orders attached", claim["user"], attached)
    flash("Your address is confirmed." + (
        f" {attached} earlier purchase(s) now appear below." if attached else ""))
    return redirect(url_for("accounts.my_orders"))


@bp.post("/verify/resend")
@login_required
def resend_verification() -> Response:
    user_ref = current_user()
    assert user_ref is not None  # noqa: S101 - login_required
    ratelimit.hit("login", ("ip", ratelimit.client_ip()), ("account", user_ref.email))
    with get_db().transaction() as cur:
        user = users.get(cur, user_ref.id)
        mail_id = _queue_verification(cur, user) if user and not user.email_verified else None
    outbox.kick([mail_id] if mail_id else [])
    flash("We sent a new confirmation link.")
    return redirect(url_for("accounts.my_orders"))


def _password_fingerprint(user: users.User) -> str:
    # Binds a reset token to the password it replaces (single use, and void
    # once the password changes); a digest, so the hash never sits in a URL.
    return hashlib.sha256(user.password_hash.encode()).hexdigest()[:32]


def _session_fingerprint(user: users.User) -> str:
    # Binds a session to the password it logged in with. Another digest than
    # the reset link's: what a mailed link shows says nothing about sessions.
    return hashlib.sha256(b"paydrop.session\0" + user.password_hash.encode()).hexdigest()[:32]


def _reset_link(user: users.User) -> str:
    token = signing.timed_serializer(RESET_SALT).dumps(
        {"user": user.id, "password": _password_fingerprint(user)})
    base = current_app.config["PUBLIC_URL"].rstrip("/")
    return f"{base}{url_for('accounts.reset_password', token=token)}"


@bp.route("/password/forgot", methods=["GET", "POST"])
def forgot_password() -> Response | str | tuple[str, int]:
    if request.method == "GET":
        return render_template("accounts/forgot.html")
    email = normalise_email(request.form.get("email"))
    ratelimit.hit("login", ("ip", ratelimit.client_ip()))
    if email is None:
        return render_template("accounts/forgot.html", errors=["Enter a valid e-mail address."],
                               email=request.form.get("email", "")), 400
    ratelimit.hit("password-reset", ("account", email))
    with get_db().transaction() as cur:
        user = users.get_by_email(cur, email)
        mail_id = None if user is None else outbox.enqueue(
            cur,
            user.email,
            "Choose a new password",
            "Someone (hopefully you) asked to reset the password of your account.\n\n"
            f"Choose a new password here:\n\n{_reset_link(user)}\n\n"
            "The link works for one hour, once. If you did not ask for it, ignore this message: "
            "your password stays as it is.\n",
        )
    outbox.kick([mail_id] if mail_id else [])
    flash(RESET_SENT)
    return redirect(url_for("accounts.login"))


def _user_for_reset(token: str) -> users.User | None:
    try:
        claim = signing.timed_serializer(RESET_SALT).loads(
            token, max_age=current_app.config["PASSWORD_RESET_TTL_SECONDS"])
    except BadSignature:  # includes SignatureExpired
        return None
    if not isinstance(claim, dict) or not isinstance(claim.get("user"), int):
        return None
    with get_db().transaction() as cur:
        user = users.get(cur, claim["user"])
    if user is None or not hmac.compare_digest(str(claim.get("password")),
                                               _password_fingerprint(user)):
        return None
    return user


@bp.route("/password/reset/<token>", methods=["GET", "POST"])
def reset_password(token: str) -> Response | str | tuple[str, int]:
    user = _user_for_reset(token)
    if user is None:
        return render_template("error.html", code=410, title="Link no longer valid",
                               message="This password reset link has expired or was already "
                                       "used. Ask for a new one."), 410
    if request.method == "GET":
        return render_template("accounts/reset.html", token=token)
    password = request.form.get("password", "")
    errors = []
    if not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        errors.append(f"Choose a password of at least {MIN_PASSWORD} characters.")
    elif password != request.form.get("password_confirm", ""):
        errors.append("The two passwords do not match.")
    if errors:
        return render_template("accounts/reset.html", token=token, errors=errors), 400
    new_hash = _hasher.hash(password)
    with get_db().transaction() as cur:
        # Guarded by the old hash: of two concurrent uses of one link, one wins.
        # Every session logged in with the old hash is logged out by it.
        if not users.replace_password_hash(cur, user.id, user.password_hash, new_hash):
            abort(410, "This password reset link was already used.")
        users.mark_email_verified(cur, user.id, user.email)
        attached = orders.attach_guest_orders(cur, user.email, user.id)
    log.info("user %s reset their password; %d guest orders attached", user.id, attached)
    _log_in(replace(user, password_hash=new_hash))
    flash("Your password is changed and you are logged in.")
    return redirect(url_for("accounts.my_orders"))


@bp.get("/orders")
@login_required
def my_orders() -> str:
    user_ref = current_user()
    assert user_ref is not None  # noqa: S101 - login_required
    with get_db().transaction() as cur:
        user = users.get(cur, user_ref.id)
        rows = orders.list_for_user(cur, user_ref.id)
        links = {
            order.id: grants.usable_for_order(cur, order.id)
            for order in rows if order.status == "paid"
        }
    return render_template("accounts/orders.html", orders=rows, grants=links,
                           verified=bool(user and user.email_verified))


@bp.post("/orders/<order_id>/link")
@login_required
def reissue_link(order_id: str) -> Response:
    user_ref = current_user()
    assert user_ref is not None  # noqa: S101 - login_required
    with get_db().transaction() as cur:
        order = orders.get(cur, order_id)
    if order is None or order.user_id != user_ref.id:
        abort(404)
    ratelimit.hit("link-reissue", ("account", str(user_ref.id)))
    reissued = fulfilment.reissue_link(order_id, current_app.config["LINK_REISSUE_LIMIT"])
    if reissued is fulfilment.REISSUE_LIMIT_REACHED:
        flash("This order has had all the new links it can get; there are no more new links. "
              "Contact us if you still cannot download it.")
    elif reissued is None:
        flash("Downloads are not available for this order.")
    else:
        flash(f"A new download link for {order.product_title} is ready below.")
    return redirect(url_for("accounts.my_orders"))
