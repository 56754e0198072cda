"""Which database errors a retry may cure: the ``transient`` flag of :class:`StoreError`.

The drain pool retries a batch that failed with a *transient* error (backoff, breaker) and
bisects a batch that failed with a *non-transient* one, dead-lettering the records that
fail on their own. So the line is drawn where a record can be to blame:

* **non-transient** - the data is wrong: an integrity violation (unique, foreign key,
  ``NOT NULL``, ``CHECK``; SQLSTATE class 23), a data exception (class 22: a number out
  of range, an invalid JSON text, a ``\\u0000`` in ``jsonb``), a cardinality violation
  (class 21), a program limit (class 54: a value too big for an index row), a value the
  driver cannot bind or serialize;
* **transient** - everything else: the connection was lost or refused, the server is
  shutting down or starting (08xxx, 57Pxx), a timeout, a serialization failure (40001),
  a deadlock (40P01), ``database is locked``, too many connections (53300) - and also
  errors of the schema (a missing table or column, a permission). Those affect every
  record alike: retrying keeps the records queued until an operator fixes the schema,
  where dead-lettering would empty the queue into the dead-letter stream.
"""

from __future__ import annotations

import sqlite3

from sqlalchemy import exc as sa_exc

from taskguard.errors import StoreError

__all__ = ["NON_TRANSIENT_SQLSTATE_CLASSES", "is_disconnect", "is_transient", "store_error"]

#: SQLSTATE classes whose errors are caused by the data written.
NON_TRANSIENT_SQLSTATE_CLASSES = frozenset({"21", "22", "23", "54"})

# SQLSTATE classes that mean "this connection is gone or the server is going away".
_DISCONNECT_SQLSTATE_CLASSES = ("08", "57P")

# Driver errors raised while binding a Python value the driver cannot send.
_BIND_MESSAGES = ("cannot adapt", "binding parameter", "type is not supported")


def _driver_error(exc: BaseException) -> BaseException:
    """The DBAPI error behind a SQLAlchemy wrapper (or ``exc`` itself)."""
    if isinstance(exc, sa_exc.StatementError) and exc.orig is not None:
        return exc.orig
    return exc


def _sqlstate(exc: BaseException) -> str | None:
    state = getattr(exc, "sqlstate", None) or getattr(exc, "pgcode", None)
    return state if isinstance(state, str) and state else None


def is_disconnect(exc: BaseException) -> bool:
    """True if ``exc`` means the connection (or the server) is gone.

    After such an error the store drops its pooled connections, so the next call
    connects afresh once the server is back.
    """
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    orig = _driver_error(exc)
    state = _sqlstate(orig)
    if state is not None:
        return state.startswith(_DISCONNECT_SQLSTATE_CLASSES)
    if isinstance(orig, sqlite3.Error):
        return False
    # psycopg raises OperationalError / InterfaceError without a SQLSTATE when the
    # socket is closed or the connection could not be made.
    return type(orig).__name__ in {"OperationalError", "InterfaceError"} or isinstance(
        orig, (ConnectionError, TimeoutError)
    )


def is_transient(exc: BaseException) -> bool:
    """Whether a retry of the failed operation may succeed (see the module docstring).

    Args:
        exc: An exception raised by SQLAlchemy, psycopg or sqlite3, or a value error
            raised while preparing a statement.

    Returns:
        False when the data written is to blame; True otherwise.
    """
    if isinstance(exc, StoreError):
        return exc.transient
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return True
    orig = _driver_error(exc)
    if isinstance(orig, (TypeError, ValueError)):
        # A bind processor or the driver rejected a Python value (UnicodeEncodeError too).
        return False
    state = _sqlstate(orig)
    if state is not None:
        return state[:2] not in NON_TRANSIENT_SQLSTATE_CLASSES
    name = type(orig).__name__
    if name in {"IntegrityError", "DataError"}:
        return False
    # A value the driver cannot bind is the data's fault; everything else (incl. "database
    # is locked", a closed connection, a schema error, a timeout, an OS error) is retried.
    cannot_bind = any(text in str(orig).lower() for text in _BIND_MESSAGES)
    return not (name in {"ProgrammingError", "InterfaceError"} and cannot_bind)


def store_error(exc: BaseException, action: str) -> StoreError:
    """Wrap ``exc`` in a :class:`StoreError` with its ``transient`` flag.

    Args:
        exc: The original error; the caller raises the result ``from exc``.
        action: What failed, for the message, e.g. ``"write to taskguard_kv"``.

    Returns:
        The error to raise.
    """
    if isinstance(exc, StoreError):
        return exc
    transient = is_transient(exc)
    orig = _driver_error(exc)
    detail = str(orig).strip().splitlines()[0] if str(orig).strip() else type(orig).__name__
    kind = "transient" if transient else "data"
    return StoreError(
        f"{action} failed ({kind} error, {type(orig).__name__}): {detail}", transient=transient
    )
