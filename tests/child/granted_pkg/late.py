"""Imported lazily, after the seal, by test_import_roots."""

VALUE = "late"
