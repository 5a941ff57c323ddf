"""Imports every in-tree method module so their ``@register`` decorators run."""
from methods import arsvd, deeptwist, dense, svd, trp  # noqa: F401
