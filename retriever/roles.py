"""What part a file plays in its repository: source, tests, docs or meta (issue templates,
changelogs: about the project rather than the code).

Ranking uses it as a prior (``FusionConfig.secondary_penalty``): a question about behaviour is
answered by the code that implements it, while the tests and docs that exercise or describe
that code repeat its names and vocabulary and would otherwise crowd it out; meta files get a
stronger one (``FusionConfig.meta_penalty``). The prior is waived when the query itself asks
for tests, docs or a changelog ("where is the test for ...").

Patterns follow the layouts of the common ecosystems (pytest, Jest, Go, JUnit, RSpec, Sphinx,
MkDocs, notebooks); a file that matches none is source.
"""

from __future__ import annotations

import re
from typing import Literal

__all__ = ["Role", "file_role", "query_roles"]

Role = Literal["source", "test", "docs", "meta"]

_TEST = re.compile(
    r"(?i:(?:^|/)(?:tests?|testing|__tests__|spec|specs|test_?data|fixtures)/"
    r"|(?:^|/)test_[^/]*$"
    r"|_tests?\.[a-z0-9]+$"
    r"|\.(?:spec|test)\.[a-z0-9]+$"
    r"|_spec\.rb$"
    r"|(?:^|/)conftest\.py$)"
    # JUnit/xUnit naming is case-sensitive: FooTest.java, TestFoo.cs, but not Contest.java
    r"|(?:^|/)[^/]*[a-z0-9]Tests?\.(?:java|kt|scala|cs|swift)$"
    r"|(?:^|/)Tests?[A-Z][^/]*\.(?:java|kt|scala|cs|swift)$"
)
_DOCS = re.compile(
    r"(?:^|/)(?:docs?|documentation|examples?|samples?|demos?|tutorials?)/"
    r"|\.(?:md|mdx|rst|adoc|txt|ipynb)$",
    re.I,
)
_META = re.compile(
    r"(?:^|/)\.(?:github|gitlab|gitea)/(?:ISSUE_TEMPLATE|PULL_REQUEST_TEMPLATE|"
    r"issue_templates|merge_request_templates)/"
    r"|(?:^|/)(?:CHANGES|CHANGELOG|CHANGELOGS|HISTORY|NEWS|RELEASES|RELEASE[-_]NOTES)"
    r"(?:\.(?:md|markdown|rst|txt|adoc|org|old))?$",
    re.I,
)
"""Project-management text: issue and merge-request templates, changelogs. A bug report
written from a repository's own issue template repeats every heading of it, and a changelog
names every feature and fix in an issue's words, so lexically they match nearly every
report (measured on Sphinx: the bug-report template was in the lexical top 5 of 39 of 57
issues); they are documentation of the project, not of the code."""
_ROOT_TEXT = re.compile(r"^(?!README)[A-Z][A-Z_-]{2,}(?:\.(?:md|markdown|rst|txt|adoc))?$")
"""Upper-case text files at the root (``AUTHORS``, ``EXAMPLES``, ``CONTRIBUTING.md``,
``LICENSE``; not the README, which documents use): about the project too."""
_ASKS_TESTS = re.compile(
    r"\b(?:tests?|testing|tested|unit ?tests?|specs?|fixtures?|pytest)\b", re.I
)
_ASKS_META = re.compile(
    r"\b(?:change ?logs?|changes file|release notes?|news file|what'?s new|issue templates?|"
    r"(?:merge|pull) request templates?)\b",
    re.I,
)
_ASKS_DOCS = re.compile(
    r"\b(?:docs?|documentation|documented|readme|examples?|tutorials?|notebooks?|guide)\b", re.I
)


def file_role(path: str) -> Role:
    """``"test"`` or ``"docs"`` for files under the usual test/docs layouts, ``"meta"`` for
    issue templates and changelogs, else ``"source"``."""
    if _TEST.search(path):
        return "test"
    if _META.search(path) or _ROOT_TEXT.match(path):
        return "meta"
    if _DOCS.search(path):
        return "docs"
    return "source"


ASKING_QUERY_WORDS = 25
"""Longer texts (bug reports, pasted chat turns) mention tests and docs in passing ("I tested
it with..."): only a short query naming them is asking for them. Measured on SWE-bench dev:
waiving on any mention halved the prior's gain (file MRR 68.3 -> 61.7)."""


def query_roles(query: str) -> frozenset[Role]:
    """The non-source roles a query asks for, whose files it must not penalise."""
    if len(query.split()) > ASKING_QUERY_WORDS:
        return frozenset()
    roles: set[Role] = set()
    if _ASKS_TESTS.search(query):
        roles.add("test")
    if _ASKS_DOCS.search(query):
        roles.add("docs")
    if _ASKS_META.search(query):
        roles.add("meta")
    return frozenset(roles)
