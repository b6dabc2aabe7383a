"""apply_patch's ``*** Begin Patch`` format in the real local (bubblewrap) sandbox: a multi-file refactor of a
small package (add + update + delete + move in one patch, as a model writes it) whose tests then pass, and a
failing hunk that leaves every file byte-identical."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from sandcastle.errors import ToolInputError
from sandcastle.sandbox.base import SandboxSpec
from sandcastle.sandbox.local_sandbox import LocalSandbox, LocalSandboxProvider
from tests.integration.test_tools_in_sandbox import call, shell

pytestmark = pytest.mark.bwrap


@pytest.fixture
def sandbox(tmp_path: Path) -> Iterator[LocalSandbox]:
    provider = LocalSandboxProvider(tmp_path)
    sandbox = provider.create(SandboxSpec(run_id="r", tenant="t", timeout_s=120))
    yield sandbox
    provider.kill(sandbox.sandbox_id)


PROJECT = {
    "textkit/textkit/__init__.py": (
        'from textkit.slug import slugify\nfrom textkit.helpers import squash\n\n__all__ = ["slugify", "squash"]\n'
    ),
    "textkit/textkit/slug.py": (
        "import re\n\n\n"
        "def slugify(text):\n"
        '    """A URL-safe slug: lower case, words joined by dashes."""  \n'
        "    text = text.lower()\n"
        '    text = re.sub(r"[^a-z0-9]+", "-", text)\n'
        '    return text.strip("-")\n'
    ),
    "textkit/textkit/helpers.py": 'def squash(text):\n    return " ".join(text.split())\n',
    "textkit/tests/__init__.py": "",
    "textkit/tests/test_slug.py": (
        "import unittest\n\n"
        "from textkit import slugify\n\n\n"
        "class SlugifyTest(unittest.TestCase):\n"
        "    def test_words(self):\n"
        '        self.assertEqual(slugify("Hello World"), "hello-world")\n\n'
        "    def test_edges(self):\n"
        '        self.assertEqual(slugify("  --Hi--  "), "hi")\n'
    ),
}

REFACTOR = """\
*** Begin Patch
*** Add File: textkit/textkit/text/__init__.py
+\"\"\"Text utilities.\"\"\"
+
+from textkit.text.slug import slugify
+
+__all__ = ["slugify"]
*** Update File: textkit/textkit/slug.py
*** Move to: textkit/textkit/text/slug.py
@@
 import re
+import unicodedata
@@ def slugify(text):
     \"\"\"A URL-safe slug: lower case, words joined by dashes.\"\"\"
-    text = text.lower()
+    text = unicodedata.normalize("NFKD", text).encode("ascii", "ignore").decode("ascii")
+    text = text.lower()
     text = re.sub(r"[^a-z0-9]+", "-", text)
*** Delete File: textkit/textkit/helpers.py
*** Update File: textkit/textkit/__init__.py
@@
-from textkit.slug import slugify
-from textkit.helpers import squash
+from textkit.text import slugify
 
-__all__ = ["slugify", "squash"]
+__all__ = ["slugify"]
*** Update File: textkit/tests/test_slug.py
@@ class SlugifyTest(unittest.TestCase):
     def test_edges(self):
         self.assertEqual(slugify("  --Hi--  "), "hi")
+
+    def test_accents(self):
+        self.assertEqual(slugify("Crème Brûlée"), "creme-brulee")
*** End of File
*** End Patch
"""


def _write_project(sandbox: LocalSandbox) -> None:
    for path, text in PROJECT.items():
        sandbox.write_file(path, text.encode())


def test_a_multi_file_refactor_applies_and_the_tests_pass(sandbox: LocalSandbox) -> None:
    _write_project(sandbox)
    assert "FAILED" not in shell(sandbox, "cd textkit && python3 -m unittest 2>&1")

    result = call(sandbox, "apply_patch", patch=REFACTOR)

    assert result == {
        "files": [
            {"path": "textkit/textkit/text/__init__.py", "action": "created", "hunks": 1},
            {
                "path": "textkit/textkit/text/slug.py",
                "action": "moved",
                "hunks": 2,
                "moved_from": "textkit/textkit/slug.py",
            },
            {"path": "textkit/textkit/helpers.py", "action": "deleted", "hunks": 0},
            {"path": "textkit/textkit/__init__.py", "action": "modified", "hunks": 1},
            {"path": "textkit/tests/test_slug.py", "action": "modified", "hunks": 1},
        ]
    }
    tests = call(sandbox, "run_command", command="cd textkit && python3 -m unittest -v 2>&1")
    assert tests["exit_code"] == 0, tests
    assert "test_accents (tests.test_slug.SlugifyTest" in tests["stdout"]["text"]
    assert "Ran 3 tests" in tests["stdout"]["text"]
    assert shell(sandbox, "cd textkit && find . -name '*.py' | sort") == (
        "./tests/__init__.py\n./tests/test_slug.py\n./textkit/__init__.py\n"
        "./textkit/text/__init__.py\n./textkit/text/slug.py\n"
    )
    # the docstring line kept its trailing spaces, though the patch's context dropped them
    assert b'dashes."""  \n' in sandbox.read_file("textkit/textkit/text/slug.py")


def test_a_failing_hunk_in_the_last_file_leaves_every_file_byte_identical(sandbox: LocalSandbox) -> None:
    _write_project(sandbox)
    before = shell(sandbox, "cd textkit && find . -type f | sort | xargs sha256sum && ls -laR --time-style=+%s")
    broken = REFACTOR.replace('"  --Hi--  "), "hi")', '"--Hi--"), "hi")')

    with pytest.raises(ToolInputError) as error:
        call(sandbox, "apply_patch", patch=broken)

    assert str(error.value) == (
        "apply_patch: hunk 1 of textkit/tests/test_slug.py (@@ class SlugifyTest(unittest.TestCase):) does not "
        "apply: its 2 context and removed lines do not occur at the end of the file (even ignoring whitespace); "
        'the closest match starts at line 10, but line 11 is "        self.assertEqual(slugify(\\"  --Hi--  \\"), '
        '\\"hi\\")" where the hunk expects "        self.assertEqual(slugify(\\"--Hi--\\"), \\"hi\\")"'
    )
    assert shell(sandbox, "cd textkit && find . -type f | sort | xargs sha256sum && ls -laR --time-style=+%s") == before
