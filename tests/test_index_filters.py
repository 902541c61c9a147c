"""Glob semantics and filter planning (pure functions, no index)."""

from __future__ import annotations

import pytest

from coderag.errors import InputError
from coderag.index import SearchFilter, compile_globs, glob_match
from coderag.index.filters import Depth, Match, glob_prefilter, norm_id, plan_filter

GLOB_CASES = [
    # '*' stays inside one path segment
    ("*.md", "README.md", True),
    ("*.md", "docs/guide.md", False),
    ("src/*.py", "src/a.py", True),
    ("src/*.py", "src/x/a.py", False),
    ("tests/*", "tests/test_a.py", True),
    ("tests/*", "tests/unit/test_a.py", False),
    ("tests/*", "tests", False),
    # '**/' is zero or more directories
    ("src/**/*.py", "src/a.py", True),
    ("src/**/*.py", "src/x/a.py", True),
    ("src/**/*.py", "src/x/y/z/a.py", True),
    ("src/**/*.py", "src2/a.py", False),
    ("src/**/*.py", "lib/src/a.py", False),
    ("src/**/*.py", "src/a.pyc", False),
    ("**/*.md", "README.md", True),
    ("**/*.md", "a/b/c.md", True),
    ("**/test_*.py", "tests/unit/test_x.py", True),
    ("**", "anything/at/all.txt", True),
    # trailing '/**' is everything below
    ("src/**", "src/a.py", True),
    ("src/**", "src/x/y.py", True),
    ("src/**", "src", False),
    ("src/**", "srcx/a.py", False),
    # '**' inside a segment crosses '/'
    ("src/**.py", "src/x/a.py", True),
    # '?' and classes never cross '/'
    ("a?c.py", "abc.py", True),
    ("a?c.py", "a/c.py", False),
    ("src/[au]*.py", "src/app.py", True),
    ("src/[au]*.py", "src/util.py", True),
    ("src/[au]*.py", "src/core.py", False),
    ("src/[!au]*.py", "src/core.py", True),
    ("src/[!au]*.py", "src/app.py", False),
    ("a[!x]b", "a/b", False),
    ("a[/]b", "a/b", False),
    # literals, regex metacharacters, leading './' and '/'
    ("src/app.py", "src/app.py", True),
    ("src/app.py", "src/app_py", False),
    ("a+b(c).py", "a+b(c).py", True),
    ("./src/*.py", "src/a.py", True),
    ("/src/*.py", "src/a.py", True),
    ("[abc", "[abc", True),  # unterminated class is literal, as in fnmatch
]


@pytest.mark.parametrize(("glob", "path", "want"), GLOB_CASES)
def test_glob_semantics(glob: str, path: str, want: bool) -> None:
    assert glob_match(glob, path) is want


def test_compile_globs_is_any_of() -> None:
    check = compile_globs(["*.md", "src/**/*.py"])
    assert check("README.md") and check("src/a/b.py")
    assert not check("docs/a.md")


def test_empty_glob_is_input_error() -> None:
    with pytest.raises(InputError):
        glob_match("", "a")
    with pytest.raises(InputError):
        glob_match("  /", "a")


@pytest.mark.parametrize(
    ("glob", "conds"),
    [
        ("src/app.py", (Match("path", ("src/app.py",)),)),
        ("src/**/*.py", (Match("dirs", ("src",)),)),
        ("src/core/*.py", (Match("dirs", ("src/core",)), Depth("dirs", 2))),
        ("*.md", (Depth("dirs", 0),)),
        ("tests/*", (Match("dirs", ("tests",)), Depth("dirs", 1))),
        ("*/x/*.py", (Depth("dirs", 2),)),
        ("**/*.py", ()),
    ],
)
def test_glob_prefilter(glob: str, conds: tuple[object, ...]) -> None:
    assert glob_prefilter(glob) == conds


@pytest.mark.parametrize(
    ("glob", "paths"),
    [
        ("src/**/*.py", ["src/a.py", "src/x/y/a.py"]),
        ("src/core/*.py", ["src/core/a.py"]),
        ("*.md", ["README.md"]),
        ("tests/*", ["tests/a"]),
    ],
)
def test_prefilter_never_drops_a_match(glob: str, paths: list[str]) -> None:
    """Every path the glob matches satisfies its prefilter (the prefilter is only a bound)."""
    from coderag.index import ancestor_dirs

    for path in paths:
        assert glob_match(glob, path)
        dirs = ancestor_dirs(path)
        for c in glob_prefilter(glob):
            if isinstance(c, Match):
                value = path if c.key == "path" else dirs
                assert (value in c.values) if c.key == "path" else set(dirs) & set(c.values)
            else:
                assert len(dirs) == c.n


def test_plan_of_empty_filter_is_empty() -> None:
    assert plan_filter(None).is_empty
    assert plan_filter(SearchFilter()).is_empty
    assert plan_filter(SearchFilter(repos=[], paths=[])).is_empty


def test_plan_drops_prefilter_when_one_glob_cannot_have_one() -> None:
    plan = plan_filter(SearchFilter(path_globs=["src/*.py", "**/*.md"]))
    assert plan.any_of is None
    assert plan.path_check is not None and plan.path_check("x/y.md")


def test_plan_rejects_a_bare_string() -> None:
    with pytest.raises(InputError, match="list"):
        plan_filter(SearchFilter(languages="python"))


def test_norm_id() -> None:
    u = "6F9619FF-8B86-D011-B42D-00CF4FC964FF"
    assert norm_id(u) == u.lower()
    assert norm_id(u.replace("-", "").lower()) == u.lower()
    with pytest.raises(InputError):
        norm_id("42")
