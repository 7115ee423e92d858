"""The storage errors (their own module so that the remote stores and store.py import them without a circle)."""

from __future__ import annotations

from convnets.errors import ConvnetsInputError


class StoreError(ConvnetsInputError):
    """A shard folder that cannot be read or written at its address (the message names the URL)."""


class ObjectMissing(StoreError):
    """The object does not exist at its address (retrying cannot help)."""
