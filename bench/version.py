"""The package version, in a leaf module: modules inside ``bench`` import it from here, not from
the package (whose lazy ``load_compressed`` would otherwise close an import cycle)."""

__version__ = "0.2.0"
