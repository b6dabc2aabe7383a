"""apply_patch in the ``*** Begin Patch`` format (V4A) against an in-memory sandbox: parsing, placing, errors."""

from __future__ import annotations

import shlex

import pytest

from sandcastle.errors import ToolInputError
from sandcastle.sandbox.base import CommandResult, SandboxSpec
from sandcastle.tools.v4a_diff import is_v4a, parse_v4a
from tests.fakes.sandbox import FakeSandbox
from tests.unit.test_tools import patch


@pytest.fixture
def sandbox() -> FakeSandbox:
    fake = FakeSandbox(sandbox_id="fake-1", spec=SandboxSpec(run_id="r", tenant="t", timeout_s=60))
    fake.answer = lambda command: _rm(fake, command)
    return fake


def _rm(sandbox: FakeSandbox, command: str) -> CommandResult:
    argv = shlex.split(command)
    assert argv[:3] == ["rm", "-f", "--"], command
    sandbox.files.pop(argv[3].removeprefix("/home/user/"), None)
    return CommandResult(exit_code=0, stdout=b"", stderr=b"", duration_ms=1)


SHOP = b"""\
class Cart:
    def __init__(self):
        self.items = []

    def total(self):
        return sum(item.price for item in self.items)


class Order:
    def __init__(self, cart):
        self.cart = cart

    def total(self):
        return self.cart.total()
"""


def test_the_format_is_told_from_the_text() -> None:
    assert is_v4a("*** Begin Patch\n*** Add File: a\n+x\n*** End Patch\n")
    assert is_v4a("*** Update File: a.py\n@@\n-x\n+y\n")  # parsed as V4A, then told it lacks its Begin line
    assert not is_v4a("--- a/a.txt\n+++ b/a.txt\n@@ -1 +1 @@\n-x\n+y\n")
    assert not is_v4a("--- a/n.md\n+++ b/n.md\n@@ -1 +1,2 @@\n *** Begin Patch\n+*** End Patch\n")


def test_one_patch_adds_updates_deletes_and_moves(sandbox: FakeSandbox) -> None:
    sandbox.files["shop/cart.py"] = SHOP
    sandbox.files["shop/legacy.py"] = b"OLD = True\n"
    sandbox.files["shop/utils.py"] = b"def money(x):\n    return f'{x:.2f}'\n"

    result = patch(
        sandbox,
        "*** Begin Patch\n"
        "*** Add File: shop/__init__.py\n+from shop.models import Cart, Order\n+\n+__all__ = ['Cart', 'Order']\n"
        "*** Update File: shop/cart.py\n*** Move to: shop/models.py\n"
        "@@ class Order:\n"
        "     def total(self):\n-        return self.cart.total()\n+        return round(self.cart.total(), 2)\n"
        "*** Delete File: shop/legacy.py\n"
        "*** Update File: shop/utils.py\n@@\n def money(x):\n-    return f'{x:.2f}'\n+    return f'${x:,.2f}'\n"
        "*** End Patch\n",
    )

    assert result == {
        "files": [
            {"path": "shop/__init__.py", "action": "created", "hunks": 1},
            {"path": "shop/models.py", "action": "moved", "hunks": 1, "moved_from": "shop/cart.py"},
            {"path": "shop/legacy.py", "action": "deleted", "hunks": 0},
            {"path": "shop/utils.py", "action": "modified", "hunks": 1},
        ]
    }
    assert sandbox.files == {
        "shop/__init__.py": b"from shop.models import Cart, Order\n\n__all__ = ['Cart', 'Order']\n",
        "shop/models.py": SHOP.replace(b"return self.cart.total()", b"return round(self.cart.total(), 2)"),
        "shop/utils.py": b"def money(x):\n    return f'${x:,.2f}'\n",
    }


def test_the_at_line_picks_which_of_two_identical_contexts_changes(sandbox: FakeSandbox) -> None:
    sandbox.files["cart.py"] = SHOP

    patch(
        sandbox,
        "*** Begin Patch\n*** Update File: cart.py\n"
        "@@ class Order:\n@@     def __init__(self, cart):\n"
        "-        self.cart = cart\n+        self.cart = cart or Cart()\n"
        "@@     def total(self):\n-        return self.cart.total()\n+        return 0\n"
        "*** End Patch",
    )

    assert sandbox.files["cart.py"] == SHOP.replace(b"= cart\n", b"= cart or Cart()\n").replace(
        b"return self.cart.total()", b"return 0"
    )


def test_hunks_are_searched_in_order_after_the_previous_one(sandbox: FakeSandbox) -> None:
    sandbox.files["cart.py"] = SHOP

    patch(
        sandbox,
        "*** Begin Patch\n*** Update File: cart.py\n"
        "@@\n     def __init__(self):\n-        self.items = []\n+        self.items = list()\n"
        "@@\n     def __init__(self, cart):\n-        self.cart = cart\n+        self.cart = dict(cart)\n"
        "@@\n     def total(self):\n-        return self.cart.total()\n+        return 1\n"
        "*** End Patch",
    )

    assert sandbox.files["cart.py"] == (
        SHOP.replace(b"= []", b"= list()").replace(b"= cart\n", b"= dict(cart)\n").replace(b"self.cart.total()", b"1")
    )


def test_context_may_differ_in_whitespace_and_punctuation_and_the_file_keeps_its_own(sandbox: FakeSandbox) -> None:
    sandbox.files["notes.py"] = b"x = 1   \n    # a \xe2\x80\x94 b\ny = 2\nz = 3\n"

    patch(
        sandbox,
        "*** Begin Patch\n*** Update File: notes.py\n@@\n x = 1\n # a - b\n-y = 2\n+y = 20\n z = 3\n*** End Patch\n",
    )

    assert sandbox.files["notes.py"] == b"x = 1   \n    # a \xe2\x80\x94 b\ny = 20\nz = 3\n"


def test_exact_context_is_preferred_to_a_fuzzy_one_earlier_in_the_file(sandbox: FakeSandbox) -> None:
    sandbox.files["f.txt"] = b"  a\nb\na\nb\n"

    patch(sandbox, "*** Begin Patch\n*** Update File: f.txt\n@@\n a\n-b\n+B\n*** End Patch")

    assert sandbox.files["f.txt"] == b"  a\nb\na\nB\n"


def test_end_of_file_anchors_the_hunk_at_the_end(sandbox: FakeSandbox) -> None:
    sandbox.files["log.txt"] = b"start\nend\nmiddle\nend\n"

    patch(sandbox, "*** Begin Patch\n*** Update File: log.txt\n@@\n-end\n+END\n*** End of File\n*** End Patch")

    assert sandbox.files["log.txt"] == b"start\nend\nmiddle\nEND\n"


def test_additions_go_after_their_at_line_or_else_at_the_end(sandbox: FakeSandbox) -> None:
    sandbox.files["cart.py"] = b"class Cart:\n    pass\n"

    patch(
        sandbox,
        "*** Begin Patch\n*** Update File: cart.py\n@@ class Cart:\n+    '''A cart.'''\n"
        "*** Update File: cart.py\n@@\n+\n+CART = Cart()\n*** End Patch",
    )

    assert sandbox.files["cart.py"] == b"class Cart:\n    '''A cart.'''\n    pass\n\nCART = Cart()\n"


def test_crlf_files_and_a_missing_final_newline_are_kept(sandbox: FakeSandbox) -> None:
    sandbox.files["win.txt"] = b"one\r\ntwo\r\nthree\r\n"
    sandbox.files["tail.txt"] = b"one\ntwo"

    patch(
        sandbox,
        "*** Begin Patch\r\n*** Update File: win.txt\r\n@@\r\n one\r\n-two\r\n+TWO\r\n+2\r\n"
        "*** Update File: tail.txt\r\n@@\r\n one\r\n-two\r\n+TWO\r\n*** End Patch\r\n",
    )

    assert sandbox.files["win.txt"] == b"one\r\nTWO\r\n2\r\nthree\r\n"
    assert sandbox.files["tail.txt"] == b"one\nTWO"


def test_a_blank_line_after_the_hunk_is_not_required_context(sandbox: FakeSandbox) -> None:
    sandbox.files["a.py"] = b"x = 1\ny = 2"

    patch(sandbox, "*** Begin Patch\n*** Update File: a.py\n@@\n-x = 1\n+x = 10\n y = 2\n\n*** End Patch")

    assert sandbox.files["a.py"] == b"x = 10\ny = 2"


def test_a_patch_wrapped_in_a_heredoc_or_a_fence_applies(sandbox: FakeSandbox) -> None:
    patch(sandbox, "apply_patch <<'EOF'\n*** Begin Patch\n*** Add File: a.txt\n+a\n*** End Patch\nEOF\n")
    patch(sandbox, "```\n*** Begin Patch\n*** Add File: b.txt\n+b\n*** End Patch\n```")

    assert sandbox.files == {"a.txt": b"a\n", "b.txt": b"b\n"}


def test_a_hunk_that_does_not_apply_names_file_hunk_and_context_and_changes_nothing(sandbox: FakeSandbox) -> None:
    sandbox.files["cart.py"] = SHOP
    sandbox.files["old.py"] = b"gone\n"
    before = dict(sandbox.files)

    with pytest.raises(ToolInputError) as error:
        patch(
            sandbox,
            "*** Begin Patch\n*** Add File: new.py\n+x\n*** Delete File: old.py\n*** Update File: cart.py\n"
            "@@ class Cart:\n-        self.items = []\n+        self.items = ()\n"
            "@@ class Order:\n     def total(self):\n-        return self.cart.sum()\n+        return 0\n"
            "*** End Patch",
        )

    assert str(error.value) == (
        "apply_patch: hunk 2 of cart.py (@@ class Order:) does not apply: its 2 context and removed lines do not "
        "occur after line 8 (even ignoring whitespace); the closest match starts at line 13, but line 14 is "
        '"        return self.cart.total()" where the hunk expects "        return self.cart.sum()"'
    )
    assert sandbox.files == before
    assert sandbox.commands == []


def test_an_at_line_that_is_not_found_is_named(sandbox: FakeSandbox) -> None:
    sandbox.files["cart.py"] = SHOP

    with pytest.raises(ToolInputError, match=r"hunk 1 of cart.py \(@@ class Basket:\) does not apply: its line "):
        patch(sandbox, "*** Begin Patch\n*** Update File: cart.py\n@@ class Basket:\n-x\n+y\n*** End Patch")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("*** Update File: a.py\n@@\n-a\n+b\n*** End Patch", "must start with a '*** Begin Patch' line"),
        ("*** Begin Patch\n*** Add File: n.py\n+a\n", "no '*** End Patch' line; it may be cut short"),
        ("*** Begin Patch\n*** End Patch\n", "names no file"),
        ("*** Begin Patch\n*** Add File: n.py\n+a\n*** End Patch\nmore words", 'line 5 "more words" is after the'),
        ("*** Begin Patch\n*** Add File:  \n+a\n*** End Patch", 'line 2 "*** Add File:  " names no file'),
        ("*** Begin Patch\n*** Edit File: a.py\n*** End Patch", "expected '*** Add File: path'"),
        ("*** Begin Patch\n*** Add File: n.py\nplain\n*** End Patch", "n.py: line 3 \"plain\" must start with '+'"),
        ("*** Begin Patch\n*** Delete File: a.py\n-a\n*** End Patch", 'a.py is followed by "-a"'),
        ("*** Begin Patch\n*** Update File: a.py\n*** End Patch", "a.py has no hunks"),
        ("*** Begin Patch\n*** Update File: a.py\n@@\n a\n*** End Patch", "hunk 1 of a.py (@@) changes nothing"),
        ("*** Begin Patch\n*** Update File: a.py\n@@\nx = 1\n*** End Patch", "line \"x = 1\" must start with ' '"),
        ("*** Begin Patch\n*** Update File: a.py\n@@\n-a\n*** Bogus\n*** End Patch", 'unknown marker "*** Bogus"'),
        (
            "*** Begin Patch\n*** Update File: a.py\n@@\n-a\n*** End of File\n-b\n*** End Patch",
            "follows '*** End of File'; start another hunk",
        ),
        ("*** Begin Patch\n*** Update File: a.py\n*** Move to: \n@@\n-a\n*** End Patch", "'*** Move to:' names no"),
    ],
)
def test_a_malformed_patch_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ToolInputError) as error:
        parse_v4a(text)

    assert message in str(error.value)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("*** Begin Patch\n*** Add File: a.py\n+b\n*** End Patch", "Add File: a.py already exists"),
        ("*** Begin Patch\n*** Delete File: nope.py\n*** End Patch", "Delete File: nope.py does not exist"),
        ("*** Begin Patch\n*** Update File: nope.py\n@@\n-a\n+b\n*** End Patch", "Update File: nope.py does not"),
        (
            "*** Begin Patch\n*** Update File: a.py\n*** Move to: b.py\n@@\n-a\n+b\n*** End Patch",
            "Move to: b.py already exists",
        ),
        ("*** Begin Patch\n*** Add File: ../../etc/x\n+b\n*** End Patch", "outside the home directory"),
        ("*** Begin Patch\n*** Update File: a.py\n*** Move to: /etc/x\n@@\n-a\n+b\n*** End Patch", "outside the home"),
    ],
)
def test_a_patch_that_does_not_fit_the_files_changes_nothing(sandbox: FakeSandbox, text: str, message: str) -> None:
    sandbox.files["a.py"] = b"a\n"
    sandbox.files["b.py"] = b"b\n"

    with pytest.raises(ToolInputError) as error:
        patch(sandbox, text)

    assert message in str(error.value)
    assert sandbox.files == {"a.py": b"a\n", "b.py": b"b\n"}


def test_a_pure_move_and_a_later_edit_of_the_moved_file(sandbox: FakeSandbox) -> None:
    sandbox.files["a.py"] = b"a = 1\n"

    result = patch(
        sandbox,
        "*** Begin Patch\n*** Update File: a.py\n*** Move to: pkg/b.py\n"
        "*** Update File: pkg/b.py\n@@\n-a = 1\n+b = 1\n*** End Patch",
    )

    assert result == {"files": [{"path": "pkg/b.py", "action": "moved", "hunks": 1, "moved_from": "a.py"}]}
    assert sandbox.files == {"pkg/b.py": b"b = 1\n"}
