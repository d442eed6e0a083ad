"""Test-wide settings: the smoke profile, results kept out of the repository, and the executor's quiet mode.

Notebooks run by nbval inherit this environment, so they run under ``smoke`` too, and, like the notebook
executor (``DPBOOK_EXECUTING=1``), with progress as plain lines and static figures instead of widgets: the
path the committed outputs were made with. (A live progress bar is a widget; hundreds of them flood the
kernel's output channel, which drops messages nbval then waits for.)
``DPBOOK_TEST_PROFILE=laptop python -m pytest notebooks`` checks them at a larger size.
"""
import os
import tempfile

os.environ["DPBOOK_PROFILE"] = os.environ.get("DPBOOK_TEST_PROFILE", "smoke")
os.environ.setdefault("DPBOOK_RESULTS", tempfile.mkdtemp(prefix="dpbook-test-results-"))
os.environ.setdefault("DPBOOK_EXECUTING", "1")
