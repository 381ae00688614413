"""The Session facade, history, save/open."""

from gmmsession.session.history import History, StepRecord
from gmmsession.session.session import Session
from gmmsession.session.store import open_session

__all__ = ["History", "StepRecord", "Session", "open_session"]
