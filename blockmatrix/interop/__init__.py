"""Conversions between blockmatrix and other Spark matrix types."""
