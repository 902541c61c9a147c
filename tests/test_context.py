"""Context assembly against hand-built hits: merging, ordering, the budget, truncation."""

from __future__ import annotations

from coderag.models import Hit
from retriever.context import approx_tokens, assemble, merge_hits, render_blocks

FILE = [f"line {i} of the file" for i in range(1, 201)]


def hit(start: int, end: int, score: float, path: str = "src/x.py", repo: str = "g/a", **kw) -> Hit:
    text = "\n".join(FILE[start - 1 : end])
    return Hit(
        id=f"{repo}:{path}:{start}-{end}",
        score=score,
        repo=repo,
        path=path,
        language="python",
        start_line=start,
        end_line=end,
        text=text,
        **kw,
    )


def words(text: str) -> int:
    return len(text.split())


def test_overlapping_and_adjacent_chunks_merge_into_one_region():
    blocks = merge_hits([hit(10, 20, 0.5), hit(15, 30, 0.9), hit(31, 35, 0.2)])
    assert len(blocks) == 1
    b = blocks[0]
    assert (b.start_line, b.end_line) == (10, 35)
    assert b.text.split("\n") == FILE[9:35]  # each line once, in order
    assert b.score == 0.9
    assert len(b.hit_ids) == 3


def test_gap_other_file_and_other_repo_are_not_merged():
    blocks = merge_hits(
        [
            hit(1, 10, 0.9),
            hit(12, 20, 0.8),  # one-line gap: we do not know that line
            hit(1, 10, 0.7, path="src/y.py"),
            hit(11, 20, 0.6, repo="g/b"),
        ]
    )
    assert [(b.repo, b.path, b.start_line, b.end_line) for b in blocks] == [
        ("g/a", "src/x.py", 1, 10),
        ("g/a", "src/x.py", 12, 20),
        ("g/a", "src/y.py", 1, 10),
        ("g/b", "src/x.py", 11, 20),
    ]


def test_blocks_are_ordered_by_their_best_hit():
    blocks = merge_hits([hit(100, 110, 0.3), hit(1, 5, 0.2), hit(4, 8, 0.95)])
    assert [(b.start_line, b.score) for b in blocks] == [(1, 0.95), (100, 0.3)]


def test_contained_chunk_adds_nothing_and_symbols_are_kept_best_first():
    blocks = merge_hits([hit(1, 30, 0.4, symbol="Outer"), hit(5, 10, 0.8, symbol="Outer.inner")])
    assert len(blocks) == 1
    assert (blocks[0].start_line, blocks[0].end_line) == (1, 30)
    assert blocks[0].symbols == ("Outer.inner", "Outer")
    assert blocks[0].text.split("\n") == FILE[0:30]


def test_a_hit_whose_text_does_not_span_its_lines_is_never_merged():
    odd = Hit(
        id="odd", score=0.5, repo="g/a", path="src/x.py", language="python",
        start_line=11, end_line=20, text="just one line",
    )  # fmt: skip
    blocks = merge_hits([hit(1, 10, 0.9), odd, hit(15, 25, 0.1)])
    texts = [b.text for b in blocks]
    assert "just one line" in texts
    assert all("just one line" not in t or t == "just one line" for t in texts)


def test_render_is_a_fenced_block_headed_by_path_and_lines():
    b = merge_hits([hit(10, 12, 1.0)])[0]
    assert b.render() == (
        "```python src/x.py (lines 10-12)\n"
        "line 10 of the file\nline 11 of the file\nline 12 of the file\n```"
    )
    assert b.name == "x.py:10-12"


def test_code_containing_a_fence_gets_a_longer_fence():
    h = Hit(
        id="md", score=1, repo="g/a", path="README.md", language="markdown",
        start_line=1, end_line=3, text="```bash\nmake\n```",
    )  # fmt: skip
    out = merge_hits([h])[0].render()
    assert out.startswith("````markdown README.md (lines 1-3)\n")
    assert out.endswith("\n````")


def test_budget_keeps_best_blocks_and_never_cuts_a_block_silently():
    hits = [hit(1, 40, 0.9), hit(60, 100, 0.8), hit(150, 152, 0.1)]
    costs = [words(b.render()) for b in merge_hits(hits)]
    budget = costs[0] + costs[2] + 5  # room for the first and the small last, not the second
    blocks = assemble(hits, budget, words)
    assert [(b.start_line, b.end_line) for b in blocks] == [(1, 40), (150, 152)]
    assert sum(b.tokens for b in blocks) <= budget
    assert not any(b.truncated for b in blocks)
    for b in blocks:  # whole blocks: every line of the range is there
        assert len(b.text.split("\n")) == b.end_line - b.start_line + 1


def test_a_single_block_larger_than_the_budget_is_truncated_with_a_marker():
    blocks = assemble([hit(1, 200, 0.9)], 300, words)
    assert len(blocks) == 1
    b = blocks[0]
    assert b.truncated and b.start_line == 1 and b.end_line < 200
    assert b.omitted == (b.end_line + 1, 200)
    rendered = b.render()
    assert f"[truncated: lines {b.end_line + 1}-200 omitted]" in rendered
    assert b.tokens == words(rendered) <= 300
    assert f"(lines 1-{b.end_line})" in rendered


def test_zero_budget_and_no_hits():
    assert assemble([hit(1, 5, 1.0)], 0, words) == []
    assert assemble([], 1000) == []


def test_default_token_estimate_errs_high_for_code():
    code = "def f(a, b):\n    return {k: v for k, v in a.items() if v}\n"
    assert approx_tokens(code) >= len(code) / 4
    assert approx_tokens("") == 0
    blocks = assemble([hit(1, 10, 1.0)], 4000)
    assert blocks and blocks[0].tokens == approx_tokens(blocks[0].render())


def test_render_blocks_names_repo_and_path():
    text = render_blocks(merge_hits([hit(1, 2, 1.0, symbol="f")]))
    assert text.startswith("g/a: src/x.py (f)\n```python src/x.py (lines 1-2)")
