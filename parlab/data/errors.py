"""Errors raised for bad dataset input; each names the file or field at fault."""

from parlab.errors import ParlabError


class DatasetError(ParlabError, ValueError):
    """An annotation file, image or argument that parlab cannot use as given."""
