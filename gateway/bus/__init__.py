"""The secure agent bus (issue 14): see ``gateway.bus.core`` for the message path."""

from gateway.bus.backend import BusBackend, Pending, StoredMessage
from gateway.bus.core import Bus, Published, Received
from gateway.bus.crypto import KeyRing, PublicKeys
from gateway.bus.message import SecureMessage

__all__ = [
    "Bus",
    "BusBackend",
    "KeyRing",
    "Pending",
    "PublicKeys",
    "Published",
    "Received",
    "SecureMessage",
    "StoredMessage",
]
