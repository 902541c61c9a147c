"""``python -m evals ...``: the same commands as ``coderag eval ...``, without the main CLI."""

from evals.cli import eval_app

if __name__ == "__main__":
    eval_app(prog_name="python -m evals")
