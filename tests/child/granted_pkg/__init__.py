"""A package outside the import roots, imported before the seal by test_import_roots."""
