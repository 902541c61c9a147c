"""The benchmark harness end to end on the real pipeline (chunkers, bundled model, Edge index,
retriever), on small slices of both benchmark layouts and on a history the test writes."""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from coderag.runtime import Runtime, build_runtime
from evals.beir import load_beir, run_beir, write_slice
from evals.harness import eval_settings
from evals.history import build_history, run_history
from evals.metrics import METRIC_NAMES
from evals.swebench import run_swebench
from tests.conftest import DATA

pytestmark = pytest.mark.integration

COSQA = DATA / "cosqa-dev-slice"
SLICE_DOCS = 200
SLICE_QUERIES = 10


@pytest.fixture
def rt(tmp_path: Path, embedder: Any) -> Iterator[Runtime]:
    """The eval runtime (temp Edge index) with the session's warmed model swapped in."""
    from coderag.settings import Settings

    base = Settings(data_dir=tmp_path / "home")
    runtime = build_runtime(eval_settings(tmp_path / "eval", base))
    runtime.embedder = embedder
    runtime.indexer.embedder = embedder
    runtime.retriever.embedder = embedder
    yield runtime
    runtime.close()


# ------------------------------------------------------------------------------ BEIR slice
@pytest.fixture(scope="module")
def cosqa_slice(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The first 200 snippets plus the gold snippets of the first 10 queries, as BEIR."""
    full = load_beir(COSQA)
    dest = tmp_path_factory.mktemp("beir") / "cosqa-slice"
    return write_slice(full, full.queries[:SLICE_QUERIES], SLICE_DOCS, dest)


def test_beir_slice_scores_well_above_chance(rt: Runtime, cosqa_slice: Path) -> None:
    ds = load_beir(cosqa_slice)
    n_docs = len(ds.corpus)
    chance_mrr = 100 * sum(1 / r for r in range(1, n_docs + 1)) / n_docs  # ~2.8
    reports = {
        mode: run_beir(rt, ds, mode=mode, per_query=True) for mode in ("dense", "lexical", "hybrid")
    }
    for mode, report in reports.items():
        assert report["n_queries"] == SLICE_QUERIES, mode
        assert report["skipped"] == []
        assert list(report["metrics"]) == list(METRIC_NAMES)
        assert report["index"]["chunks"] >= n_docs
        assert report["latency_ms"]["p50"] > 0
        assert all(len(q["top"]) == len(set(q["top"])) for q in report["per_query"])
    assert reports["dense"]["metrics"]["mrr"] > 10 * chance_mrr
    assert reports["hybrid"]["metrics"]["mrr"] > 10 * chance_mrr
    assert reports["lexical"]["metrics"]["mrr"] > 5 * chance_mrr
    assert reports["dense"]["metrics"]["recall@10"] >= 60


# ------------------------------------------------------------------------------ repositories
def git(repo: Path, *args: str, when: int = 1_700_000_000) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "Dev",
        "GIT_AUTHOR_EMAIL": "dev@example.com",
        "GIT_COMMITTER_NAME": "Dev",
        "GIT_COMMITTER_EMAIL": "dev@example.com",
        "GIT_AUTHOR_DATE": f"@{when} +0000",
        "GIT_COMMITTER_DATE": f"@{when} +0000",
    }
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, env=env
    ).stdout.strip()


SHOP = {
    "shop/cart.py": '''"""Shopping cart."""


class Cart:
    """Items a customer is about to buy."""

    def __init__(self):
        self.items = {}

    def add_item(self, sku, quantity=1):
        """Put a product in the cart or raise its quantity."""
        self.items[sku] = self.items.get(sku, 0) + quantity

    def remove_item(self, sku):
        """Take a product out of the cart."""
        self.items.pop(sku, None)

    def total(self, prices):
        """Sum of price times quantity, with a bulk discount for large quantities."""
        amount = 0.0
        for sku, qty in self.items.items():
            price = prices[sku]
            if qty >= 10:
                price *= 0.9
            amount += price * qty
        return round(amount, 2)
''',
    "shop/payment.py": '''"""Card payments through the gateway."""

import time


def charge_card(gateway, card, amount, retries=3):
    """Charge a credit card, retrying when the payment gateway times out."""
    for attempt in range(retries):
        try:
            return gateway.charge(card, amount)
        except TimeoutError:
            time.sleep(2 ** attempt)
    raise RuntimeError("payment gateway unavailable")


def refund(gateway, charge_id, amount):
    """Give money back to the customer for a previous charge."""
    return gateway.refund(charge_id, amount)
''',
    "shop/shipping.py": '''"""Shipping costs and delivery estimates."""

RATES = {"domestic": 4.5, "europe": 9.0, "world": 19.0}


def shipping_cost(weight_kg, zone):
    """Price of sending a parcel of this weight to a shipping zone."""
    base = RATES[zone]
    return base + max(0.0, weight_kg - 1.0) * 1.2


def delivery_days(zone):
    """Estimated number of days before the parcel arrives."""
    return {"domestic": 2, "europe": 5, "world": 12}[zone]
''',
    "shop/inventory.py": '''"""Stock levels in the warehouse."""


class Inventory:
    def __init__(self, stock):
        self.stock = dict(stock)
        self.reserved = {}

    def reserve(self, sku, quantity):
        """Hold units of a product for an order being paid."""
        if self.stock.get(sku, 0) - self.reserved.get(sku, 0) < quantity:
            raise ValueError("out of stock")
        self.reserved[sku] = self.reserved.get(sku, 0) + quantity

    def release(self, sku, quantity):
        """Give reserved units back when an order is cancelled."""
        self.reserved[sku] = max(0, self.reserved.get(sku, 0) - quantity)
''',
    "shop/emails.py": '''"""Emails sent to customers."""


def render_template(name, **values):
    """Fill the placeholders of an email template."""
    return TEMPLATES[name].format(**values)


def send_order_confirmation(mailer, order, customer):
    """Email the customer a confirmation with the order number and their name."""
    body = render_template("confirmation", name=customer.full_name, number=order.number)
    mailer.send(customer.email, "Your order", body)


TEMPLATES = {"confirmation": "Hello {name}, we received order {number}."}
''',
    "shop/users.py": '''"""Customer accounts and passwords."""

import hashlib
import os


def hash_password(password, salt=None):
    """Derive a salted PBKDF2 hash of a password for storage."""
    salt = salt or os.urandom(16)
    return salt, hashlib.pbkdf2_hmac("sha256", password.encode(), salt, 100_000)


def check_login(user, password):
    """True when the password matches the stored hash of the user."""
    _, digest = hash_password(password, user.salt)
    return digest == user.password_hash
''',
    "shop/taxes.py": '''"""Value added tax."""

VAT = {"FR": 0.20, "DE": 0.19, "LU": 0.17}


def vat_amount(net_price, country):
    """VAT to add to a net price for a buyer in this country."""
    return round(net_price * VAT.get(country, 0.0), 2)
''',
    "shop/reports.py": '''"""Sales reports for the back office."""

import csv


def sales_report_csv(orders, path):
    """Write one CSV row per order with date, customer and amount."""
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["date", "customer", "amount"])
        for order in orders:
            writer.writerow([order.date.isoformat(), order.customer, order.amount])
''',
}

DAY = 86_400


def _commit(repo: Path, files: dict[str, str], msg: str, when: int) -> str:
    for rel, text in files.items():
        p = repo / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", msg, when=when)
    return git(repo, "rev-parse", "HEAD")


@pytest.fixture
def shop_repo(tmp_path: Path) -> tuple[Path, list[str]]:
    """The shop at three commits (oldest first), each a small change of one module."""
    repo = tmp_path / "shop"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    t0 = 1_700_000_000
    shas = [_commit(repo, {**SHOP, "README.md": "# shop\n"}, "Initial import", t0)]
    ship = SHOP["shop/shipping.py"].replace("* 1.2", "* 1.5")
    shas.append(
        _commit(
            repo,
            {"shop/shipping.py": ship},
            "Charge more per kilogram for heavy parcels\n\nShipping cost of parcels over "
            "one kilogram was too low for every zone.",
            t0 + DAY,
        )
    )
    pay = SHOP["shop/payment.py"].replace(
        "return gateway.refund(charge_id, amount)",
        "if gateway.already_refunded(charge_id):\n        return None\n"
        "    return gateway.refund(charge_id, amount)",
    )
    shas.append(
        _commit(
            repo,
            {"shop/payment.py": pay},
            "Do not refund a charge twice\n\nA retried refund request gave the customer "
            "their money back two times.",
            t0 + 2 * DAY,
        )
    )
    inv = SHOP["shop/inventory.py"].replace("max(0, ", "max(0,  ")
    shas.append(
        _commit(
            repo,
            {"shop/inventory.py": inv},
            "Release reserved stock when an order is cancelled",
            t0 + 3 * DAY,
        )
    )
    _commit(repo, {"README.md": "# shop\n\nA toy shop.\n"}, "Describe the project", t0 + 4 * DAY)
    return repo, shas


def test_swebench_layout_on_a_built_repo(
    rt: Runtime, shop_repo: tuple[Path, list[str]], tmp_path: Path
) -> None:
    repo, (c1, c2, c3, _) = shop_repo
    rows = [  # newest first: the runner has to sort them forward
        ("shop-3", c3, "Order confirmation email greets the customer with the wrong name",
         ["shop/emails.py"], {"shop/emails.py": ["send_order_confirmation"]}),
        ("shop-1", c1, "Customers get refunded twice for one charge when the refund is retried",
         ["shop/payment.py"], {"shop/payment.py": ["imports", "refund"]}),
        ("shop-2", c2, "The cart total applies no bulk discount when buying ten or more units",
         ["shop/cart.py"], {"shop/cart.py": ["Cart.total"]}),
    ]  # fmt: skip
    path = tmp_path / "shop-bench" / "instances.jsonl"
    path.parent.mkdir()
    with path.open("w") as fh:
        for iid, base, text, files, spans in rows:
            fh.write(json.dumps({"instance_id": iid, "repo": "acme/shop", "base_commit": base,
                                 "problem_statement": text, "gold_files": files,
                                 "gold_spans": spans, "splits": ["lite"]}) + "\n")  # fmt: skip
        fh.write(json.dumps({"instance_id": "other-1", "repo": "acme/other", "base_commit": c1,
                             "problem_statement": "x", "gold_files": ["a.py"],
                             "gold_spans": {}, "splits": []}) + "\n")  # fmt: skip

    partials: list[dict] = []
    report = run_swebench(
        rt, path, {"acme/shop": repo}, mode="hybrid", per_query=True, checkpoint=partials.append
    )
    # after each instance but the last, the report so far: a stopped eval keeps it
    assert [p["partial"] for p in partials] == [{"done": 1, "of": 3}, {"done": 2, "of": 3}]
    assert [p["n_queries"] for p in partials] == [1, 2]
    assert partials[1]["per_query"] == report["per_query"][:2]
    assert "partial" not in report
    assert report["dataset"] == "shop-bench"
    assert report["n_queries"] == 3
    assert report["skipped"] == [{"id": "other-1", "reason": "repository acme/other not given"}]
    per_query = report["per_query"]
    assert [q["id"] for q in per_query] == ["shop-1", "shop-2", "shop-3"]
    assert [q["index_mode"] for q in per_query] == ["full", "incremental", "incremental"]
    assert report["metrics"]["acc@3"] >= 66.67
    assert report["metrics"]["mrr"] >= 60
    fl = report["function_level"]
    assert fl["n_queries"] == 3
    assert fl["metrics"]["recall@10"] >= 66.67
    assert report["index"]["chunks"] > len(SHOP)


def test_history_benchmark_on_a_built_repo(rt: Runtime, shop_repo: tuple[Path, list[str]]) -> None:
    repo, _ = shop_repo
    bench = build_history(repo, name="acme/shop")
    # the root and the README-only commit are left out
    assert len(bench.instances) == 3
    assert bench.excluded == {"no_code_file_changed": 1, "root": 1}
    report = run_history(rt, bench, repo, mode="hybrid")
    assert report["dataset"] == "history/acme/shop"
    assert report["n_queries"] == 3
    assert "function_level" not in report
    assert report["metrics"]["acc@3"] >= 66.67  # chance: 3 of 8 files
