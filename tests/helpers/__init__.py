"""Reusable test parts (real servers, no mocks). Import as `helpers.<module>`: tests/ has no
__init__.py, so pytest puts tests/ itself on sys.path."""
