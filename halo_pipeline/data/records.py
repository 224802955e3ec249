"""`records`: a built-in extraction dataset — order notes in varied natural phrasings and the JSON record each holds.

Each row asks for one order as JSON (`prompt`) and carries the answer (`reference`, compact JSON text) and the
schema every answer follows (`SCHEMA`, also shipped as `recipes/schemas/order.json`). The notes vary in what
matters to an extractor: six phrasings, customer names, items (the record copies the item as the note writes it,
plural included), quantities, dates in three formats (the record always says YYYY-MM-DD), a payment method (an enum), a nested shipping city, and an optional note
that the record holds only when the text has one.

The splits are disjoint by construction: `test` draws its customers' first names, last names and cities from
pools `train` never uses, and every test prompt differs from every train prompt (the decontamination check, run
by any recipe that probes on `records:test`, confirms it). Rows are generated from a fixed seed per split: the
same on every machine and Python version (`random.Random` seeded with a string, which it hashes with SHA-512, not `hash()`).
"""

from __future__ import annotations

import functools
import json
import random
from typing import Any

SPLITS = {"train": 600, "test": 200}
INSTRUCTION = "Extract the order below as one JSON object with the keys {keys}. Write the date as YYYY-MM-DD."
KEYS = "customer, item, quantity, date, payment, ship_to (an object with city) and, only if the text has one, note"

# Patterns say what each string is (a name, a word or two, a city) and bound its length, so a constrained model cannot
# answer a field with a sentence; every reference record follows it (tests/unit/test_records.py).
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "customer": {"type": "string", "pattern": "^[A-Z][a-z]{1,23} [A-Z][a-z]{1,23}$"},
        "item": {"type": "string", "pattern": "^[a-z]{2,24}( [a-z]{2,24})?$"},
        "quantity": {"type": "integer", "minimum": 1, "maximum": 99},
        "date": {"type": "string", "pattern": "^[0-9]{4}-[0-9]{2}-[0-9]{2}$"},
        "payment": {"enum": ["card", "cash", "invoice"]},
        "ship_to": {
            "type": "object",
            "properties": {"city": {"type": "string", "pattern": "^[A-Z][a-z]{1,23}$"}},
            "required": ["city"],
            "additionalProperties": False,
        },
        "note": {"type": "string", "pattern": "^[a-z0-9][a-z0-9 ,]{2,40}$"},
    },
    "required": ["customer", "item", "quantity", "date", "payment", "ship_to"],
    "additionalProperties": False,
}

_FIRST = {
    "train": ["Ada", "Amir", "Anna", "Ben", "Chen", "Clara", "Dev", "Elena", "Farah", "Grace", "Hugo", "Ines", "Jonas",
              "Kai", "Lena", "Luis", "Maya", "Nils", "Omar", "Priya", "Rosa", "Sami", "Tara", "Yusuf"],
    "test": ["Aiko", "Bruno", "Carmen", "Dmitri", "Esther", "Felix", "Greta", "Hassan", "Ivy", "Jamal", "Kira", "Leo",
             "Mira", "Noah", "Olga", "Pablo"],
}  # fmt: skip
_LAST = {
    "train": ["Alvarez", "Berg", "Costa", "Diaz", "Evans", "Fischer", "Garcia", "Hansen", "Ito", "Jensen", "Kowalski",
              "Lopez", "Moreau", "Novak", "Okafor", "Patel", "Rossi", "Schmidt", "Tanaka", "Weber"],
    "test": ["Andersen", "Brooks", "Castillo", "Dubois", "Eriksen", "Ferreira", "Gupta", "Horvat", "Ivanova", "Keller",
             "Lindqvist", "Mendes"],
}  # fmt: skip
_CITIES = {
    "train": ["Lisbon", "Oslo", "Vienna", "Dublin", "Prague", "Madrid", "Zurich", "Warsaw", "Athens", "Helsinki", "Porto",
              "Lyon", "Munich", "Seville", "Bergen", "Krakow"],
    "test": ["Tallinn", "Bruges", "Valencia", "Gdansk", "Salzburg", "Turin", "Aarhus", "Ghent", "Bilbao", "Leipzig"],
}  # fmt: skip
_ITEMS = ["desk lamp", "notebook", "coffee mug", "chair", "backpack", "water bottle", "phone case", "umbrella", "candle",
          "keyboard", "towel", "teapot", "pillow", "frame", "plant pot", "blanket"]  # fmt: skip
_NOTES = ["leave it at the door", "gift wrap please", "call before delivery", "fragile, handle with care",
          "deliver after 5 pm", "no invoice in the box"]  # fmt: skip
_MONTHS = ["January", "February", "March", "April", "May", "June", "July", "August", "September", "October", "November",
           "December"]  # fmt: skip
_PAID = {
    "card": ["by card", "with a card", "card"],
    "cash": ["in cash", "cash", "cash on delivery"],
    "invoice": ["by invoice", "invoice", "on invoice"],
}
_TEMPLATES = [
    "On {date}, {name} ordered {goods}, paid {paid}, to be shipped to {city}.",
    "{name} from {city} bought {goods} on {date} and paid {paid}.",
    "Order received {date}: {goods} for {name} ({city}), payment {paid}.",
    "Please ship {goods} to {name} in {city}. Ordered on {date}, paying {paid}.",
    "{city} order from {name}, dated {date}: {goods}, settled {paid}.",
    "New order! {name} wants {goods}, delivered to {city}. Date: {date}. Payment: {paid}.",
]


def _date_text(rng: random.Random, year: int, month: int, day: int) -> str:
    style = rng.randrange(3)
    if style == 0:
        return f"{year:04d}-{month:02d}-{day:02d}"
    if style == 1:
        return f"{_MONTHS[month - 1]} {day}, {year}"
    return f"{day} {_MONTHS[month - 1]} {year}"


def _goods(quantity: int, item: str) -> str:
    return f"a {item}" if quantity == 1 and item[0] not in "aeiou" else f"an {item}" if quantity == 1 else f"{quantity} {item}s"


def make(split: str) -> list[dict[str, Any]]:
    """The split's rows: `id`, `prompt`, `reference` (the record as compact JSON text) and `note_given`."""
    if split not in SPLITS:
        raise ValueError(f"records has no split {split!r}; its splits: {', '.join(SPLITS)}")
    rng = random.Random(f"records:{split}:1")
    rows: list[dict[str, Any]] = []
    seen: set[str] = set()
    while len(rows) < SPLITS[split]:
        first, last = rng.choice(_FIRST[split]), rng.choice(_LAST[split])
        city, item = rng.choice(_CITIES[split]), rng.choice(_ITEMS)
        quantity = rng.choice([1, 1, 2, 2, 3, 4, 5, 6, 8, 10, 12, 20])
        year, month, day = rng.randrange(2021, 2026), rng.randrange(1, 13), rng.randrange(1, 29)
        payment = rng.choice(sorted(_PAID))
        note = rng.choice(_NOTES) if rng.random() < 0.3 else None
        text = rng.choice(_TEMPLATES).format(
            date=_date_text(rng, year, month, day), name=f"{first} {last}", goods=_goods(quantity, item), city=city,
            paid=rng.choice(_PAID[payment]),
        )  # fmt: skip
        if note:
            text += f" Note: {note}."
        record: dict[str, Any] = {
            "customer": f"{first} {last}",
            "item": item if quantity == 1 else f"{item}s",  # as the note writes it: extraction copies, it does not rewrite
            "quantity": quantity,
            "date": f"{year:04d}-{month:02d}-{day:02d}",
            "payment": payment,
            "ship_to": {"city": city},
        }
        if note:
            record["note"] = note
        if text in seen:
            continue
        seen.add(text)
        prompt = INSTRUCTION.format(keys=KEYS) + "\n\n" + text
        rows.append({"id": f"{split}-{len(rows):04d}", "prompt": prompt, "reference": json.dumps(record), "note_given": bool(note)})
    return rows


def fingerprint(split: str | None) -> str:
    """The rows' digest: what a cache key holds for them (a change to the generator changes it)."""
    import hashlib

    names = [split] if split else list(SPLITS)
    return hashlib.sha256("\n".join(t for n in names for t in _cached(n)).encode()).hexdigest()[:16]


@functools.cache
def _cached(split: str) -> tuple[str, ...]:
    return tuple(json.dumps(r) for r in make(split))


def records(split: str | None) -> list[dict[str, Any]]:
    """Rows of a split (both, train first, when `split` is None); fresh dicts on every call."""
    names = [split] if split else list(SPLITS)
    return [json.loads(text) for name in names for text in _cached(name)]
