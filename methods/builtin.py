"""Imports every in-tree method module so their ``@register`` decorators run."""
from methods import arsvd, cp, deeptwist, dense, svd, trp, tucker2  # noqa: F401
