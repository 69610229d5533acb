"""Errors raised for bad dataset input; each names the file or field at fault."""


class DatasetError(ValueError):
    """An annotation file, image or argument that parlab cannot use as given."""
