"""Test-wide settings: the smoke profile, and results kept out of the repository.

Notebooks run by nbval inherit this environment, so they run under ``smoke`` too.
``DPBOOK_TEST_PROFILE=laptop python -m pytest notebooks`` checks them at a larger size.
"""
import os
import tempfile

os.environ["DPBOOK_PROFILE"] = os.environ.get("DPBOOK_TEST_PROFILE", "smoke")
os.environ.setdefault("DPBOOK_RESULTS", tempfile.mkdtemp(prefix="dpbook-test-results-"))
